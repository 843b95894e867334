"""Offline token counting with tiktoken, built from BPE files shipped in this repo.

tiktoken normally downloads its BPE files on first use and caches them under
TIKTOKEN_CACHE_DIR (or a temp dir).  Servers here may have no egress and a
read-only or ephemeral temp dir, so we build the encodings ourselves from
``budgets/data/bpe/*.tiktoken`` and never call ``tiktoken.get_encoding``.
This module must not import Django: it is used from workers and scripts too.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.model

# The special-token strings are module constants in tiktoken's own encoding
# definitions, so import them rather than retyping them.
from tiktoken_ext.openai_public import (
    ENDOFPROMPT,
    ENDOFTEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
)

__all__ = [
    "BPEFileError",
    "build_encoding",
    "count_message_tokens",
    "count_text_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "load_bpe_ranks",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
DEFAULT_ENCODING = CL100K_BASE
SUPPORTED_ENCODINGS = (O200K_BASE, CL100K_BASE)

# Module-level so tests (and deployments that relocate data) can point it elsewhere.
BPE_DIR = Path(__file__).resolve().parent / "data" / "bpe"

# SHA-256 of each BPE file, copied verbatim from the `expected_hash=` arguments in
# tiktoken_ext/openai_public.py (tiktoken 0.14.0); these are OpenAI's published hashes.
BPE_SHA256 = {
    O200K_BASE: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    CL100K_BASE: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}

# tiktoken only exposes these regexes inside its constructor functions, so they are
# copied from tiktoken_ext/openai_public.py; tests/test_tokens.py checks they still match.
_CL100K_PAT_STR = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
# Kept as tiktoken writes it (a join of alternatives) so it can be diffed against upstream.
_O200K_PAT_STR = "|".join(  # noqa: FLY002
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

_PAT_STR = {O200K_BASE: _O200K_PAT_STR, CL100K_BASE: _CL100K_PAT_STR}
_SPECIAL_TOKENS = {
    O200K_BASE: {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    CL100K_BASE: {
        ENDOFTEXT: 100257,
        FIM_PREFIX: 100258,
        FIM_MIDDLE: 100259,
        FIM_SUFFIX: 100260,
        ENDOFPROMPT: 100276,
    },
}

# Used only when tiktoken does not recognise the model (older tiktoken releases lack
# newer names, and it has no entry for bare "gpt-4.5").  Checked in order, so the
# o200k families come before the broader "gpt-4" prefix.
_PREFIX_TO_ENCODING: tuple[tuple[str, str], ...] = (
    ("gpt-4o", O200K_BASE),
    ("gpt-4.1", O200K_BASE),
    ("gpt-4.5", O200K_BASE),
    ("gpt-5", O200K_BASE),
    ("chatgpt-4o", O200K_BASE),
    ("gpt-oss", O200K_BASE),
    ("o1", O200K_BASE),
    ("o3", O200K_BASE),
    ("o4", O200K_BASE),
    ("gpt-4", CL100K_BASE),
    ("gpt-3.5", CL100K_BASE),
    ("gpt-35", CL100K_BASE),
    ("text-embedding-ada-002", CL100K_BASE),
    ("text-embedding-3-", CL100K_BASE),
    ("davinci-002", CL100K_BASE),
    ("babbage-002", CL100K_BASE),
)

# OpenAI cookbook "How to count tokens with tiktoken" framing for current chat models.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3


class BPEFileError(ValueError):
    """A shipped BPE file is missing, corrupted or unparsable."""


def load_bpe_ranks(name: str, path: Path | str | None = None) -> dict[bytes, int]:
    """Read, hash-check and parse the BPE file for `name` (default: the shipped copy).

    Parses the bytes ourselves instead of calling tiktoken.load.load_tiktoken_bpe,
    because that copies even local files into tiktoken's cache dir.
    """
    if name not in BPE_SHA256:
        raise ValueError(
            f"Unsupported encoding {name!r}; expected one of {SUPPORTED_ENCODINGS}"
        )
    bpe_path = Path(path) if path is not None else BPE_DIR / f"{name}.tiktoken"
    try:
        data = bpe_path.read_bytes()
    except OSError as exc:
        raise BPEFileError(
            f"Cannot read BPE file for {name} at {bpe_path}: {exc}"
        ) from exc

    actual = hashlib.sha256(data).hexdigest()
    if actual != BPE_SHA256[name]:
        raise BPEFileError(
            f"SHA-256 mismatch for {name} BPE file {bpe_path}: expected {BPE_SHA256[name]}, "
            f"got {actual}. The file is corrupted or not the published {name}.tiktoken."
        )

    # Same format and parsing as tiktoken.load.load_tiktoken_bpe: "<base64 token> <rank>".
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
        except Exception as exc:
            raise BPEFileError(f"Error parsing line {line!r} in {bpe_path}") from exc
    return ranks


def build_encoding(name: str, path: Path | str | None = None) -> tiktoken.Encoding:
    """Build a fresh (uncached) Encoding for `name` from a local BPE file."""
    ranks = load_bpe_ranks(name, path)  # validates `name` first
    return tiktoken.Encoding(
        name=name,
        pat_str=_PAT_STR[name],
        mergeable_ranks=ranks,
        special_tokens=dict(_SPECIAL_TOKENS[name]),
    )


_build_lock = threading.Lock()


@functools.cache
def _load_encoding_once(name: str) -> tiktoken.Encoding:
    """Inner cache consulted under the lock so each encoding is built exactly once."""
    return build_encoding(name)


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the process-wide cached Encoding `name` ("o200k_base" or "cl100k_base")."""
    # The outer cache keeps the hot path lock-free; the lock stops concurrent gunicorn
    # threads from each parsing a ~200k-entry file when they race on the first request.
    with _build_lock:
        return _load_encoding_once(name)


def _clear_caches() -> None:
    """Forget cached encodings (for tests that repoint BPE_DIR)."""
    get_encoding.cache_clear()
    _load_encoding_once.cache_clear()


def encoding_name_for_model(model: str) -> str:
    """Name of the shipped encoding that best approximates `model`'s tokenizer."""
    # "openai/gpt-4o", "azure/gpt-4o-mini", "openrouter/openai/gpt-4o": keep the last part.
    bare = model.strip().rsplit("/", 1)[-1].lower()
    try:
        # Pure dictionary lookup in tiktoken (no network); raises KeyError when unknown.
        known = tiktoken.model.encoding_name_for_model(bare)
    except KeyError:
        known = None
    if known in SUPPORTED_ENCODINGS:
        return known
    if known == "o200k_harmony":
        # gpt-oss: same ranks and regex as o200k_base, only extra special tokens, which
        # we never honour in user text, so counts are identical.
        return O200K_BASE
    if known is not None:
        # r50k/p50k/gpt2 (legacy davinci, curie, codex...): those files are not shipped;
        # cl100k_base is a close enough estimate for budgeting such rare models.
        return DEFAULT_ENCODING
    for prefix, encoding_name in _PREFIX_TO_ENCODING:
        if bare.startswith(prefix):
            return encoding_name
    # Claude, Gemini, Llama, unknown: no public tokenizer here; cl100k_base is the
    # conventional estimate (what litellm and most proxies fall back to as well).
    return DEFAULT_ENCODING


def encoding_for_model(model: str) -> tiktoken.Encoding:
    """Cached Encoding for `model` (see encoding_name_for_model)."""
    return get_encoding(encoding_name_for_model(model))


def _count(enc: tiktoken.Encoding, text: str) -> int:
    # disallowed_special=() treats "<|endoftext|>" in user text as plain text instead of
    # raising, matching how the API bills it.
    return len(enc.encode(text, disallowed_special=()))


def count_text_tokens(model: str, text: str) -> int:
    """Number of tokens in `text` under `model`'s encoding."""
    return _count(encoding_for_model(model), text)


def _content_texts(content: Any) -> list[str]:
    """Text pieces of a message value: a string, or the text parts of a parts list."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        # Multimodal content: [{"type": "text", "text": "..."}, {"type": "image_url", ...}].
        # Only text is counted; image/audio pricing is not token-per-character.
        return [
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ]
    # None (assistant tool-call turns), numbers, nested objects: nothing to encode.
    return []


def count_message_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    """Prompt tokens for a chat request, using the OpenAI cookbook's message framing."""
    if not isinstance(messages, list):
        # ValueError (not TypeError) by contract: callers map it to a 400 for bad payloads.
        raise ValueError(  # noqa: TRY004
            f"messages must be a list of dicts, got {type(messages).__name__}"
        )
    enc = encoding_for_model(model)
    total = 0
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(  # noqa: TRY004
                f"messages[{index}] must be a dict with 'role' and 'content', got {type(message).__name__}"
            )
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            for text in _content_texts(value):
                total += _count(enc, text)
            if key == "name" and isinstance(value, str):
                total += TOKENS_PER_NAME
    return total + REPLY_PRIMING_TOKENS
