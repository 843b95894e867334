"""Offline token counting with tiktoken, from BPE files shipped in this repo.

tiktoken reads an encoding's BPE file from the directory in TIKTOKEN_CACHE_DIR,
named by the SHA-1 of its download URL, and downloads it only when it is missing
there.  ``budgets/data/bpe/`` holds the two files under those names and this
module points TIKTOKEN_CACHE_DIR at it, so ``tiktoken.get_encoding`` never
touches the network, a temp dir or the user's own tiktoken cache.
This module must not import Django: it is used from workers and scripts too.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tiktoken
import tiktoken.load
import tiktoken.model
from tiktoken_ext import openai_public

__all__ = [
    "BPEFileError",
    "build_encoding",
    "count_message_tokens",
    "count_text_tokens",
    "encoding_for_model",
    "encoding_name_for_model",
    "get_encoding",
    "verify_bpe_file",
]

O200K_BASE = "o200k_base"
CL100K_BASE = "cl100k_base"
DEFAULT_ENCODING = CL100K_BASE
SUPPORTED_ENCODINGS = (O200K_BASE, CL100K_BASE)

# Module-level so tests (and deployments that relocate data) can point it elsewhere.
BPE_DIR = Path(__file__).resolve().parents[1] / "data" / "bpe"

# Download URL and SHA-256 of each BPE file, as passed to load_tiktoken_bpe in
# tiktoken_ext/openai_public.py (tiktoken 0.14.0); tests/test_tokens.py checks they still are.
BPE_URL = {
    O200K_BASE: "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    CL100K_BASE: "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
BPE_SHA256 = {
    O200K_BASE: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    CL100K_BASE: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}


def bpe_path(name: str) -> Path:
    """Where tiktoken looks for `name`'s BPE file: BPE_DIR / sha1(download URL)."""
    return BPE_DIR / hashlib.sha1(BPE_URL[name].encode(), usedforsecurity=False).hexdigest()


def _pin_cache_dir() -> None:
    # Overrides (not setdefault) a user's TIKTOKEN_CACHE_DIR: any other directory lacks these
    # files or holds unchecked ones, and tiktoken would then download.  Re-pinned before each
    # load because libraries imported later (litellm) point it at their own directory.
    os.environ["TIKTOKEN_CACHE_DIR"] = str(BPE_DIR)


_pin_cache_dir()

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
    """A shipped BPE file is missing or is not the published one."""


def verify_bpe_file(name: str) -> None:
    """Refuse a missing or altered shipped BPE file before tiktoken sees it.

    tiktoken checks the hash too, but on a mismatch it deletes the file and downloads
    a fresh copy (tiktoken/load.py read_file_cached; pinned by tests/test_tokens.py),
    and it downloads a missing one: offline we must fail instead.
    """
    path = bpe_path(name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BPEFileError(f"Cannot read BPE file for {name} at {path}: {exc}") from exc
    if not tiktoken.load.check_hash(data, BPE_SHA256[name]):
        raise BPEFileError(
            f"SHA-256 mismatch for {name} BPE file {path}: expected {BPE_SHA256[name]}, "
            f"got {hashlib.sha256(data).hexdigest()}. The file is corrupted or not the published "
            f"{name}.tiktoken."
        )


def _check_name(name: str) -> None:
    if name not in SUPPORTED_ENCODINGS:
        raise ValueError(f"Unsupported encoding {name!r}; expected one of {SUPPORTED_ENCODINGS}")


def build_encoding(name: str) -> tiktoken.Encoding:
    """A fresh (uncached) Encoding for `name`, built by tiktoken's own constructor."""
    _check_name(name)
    verify_bpe_file(name)
    _pin_cache_dir()
    # tiktoken's constructor: its regex and special tokens, ranks read through TIKTOKEN_CACHE_DIR.
    return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """The process-wide Encoding `name` ("o200k_base" or "cl100k_base")."""
    _check_name(name)
    verify_bpe_file(name)
    _pin_cache_dir()
    # tiktoken's registry builds each encoding once per process, under its own lock.
    return tiktoken.get_encoding(name)


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
