"""Tests for budgets.domain.tokens: offline tiktoken encodings, model mapping, chat framing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

from budgets.domain import tokens

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_BPE_DIR = REPO_ROOT / "budgets" / "data" / "bpe"
ENCODING_NAMES = ("o200k_base", "cl100k_base")

SAMPLE_TEXTS = [
    "",
    "hello",
    "Hello, world!",
    "Ünïcödé façade naïve café — “quotes” ‘single’ …",
    "日本語のテキストと中文文本，한국어 텍스트, русский текст, עברית, العربية",
    "emoji 😀🎉👩‍👩‍👧‍👦🏳️‍🌈 flags 🇺🇸🇯🇵 skin 👍🏽",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\n\n\nblank lines\n",
    "\n\n\n",
    " ",
    "def add(a: int, b: int) -> int:\n    return a + b  # comment\n",
    '{"key": [1, 2, 3], "nested": {"x": null}}',
    "SELECT * FROM budgets WHERE spend > 100.00;",
    "1234567890 3.14159 -42 1e10",
    "special-looking text <|endoftext|> and <|endofprompt|> <|fim_prefix|>",
    "I'm sure they'll've DONE it, it's THEIR'S",
    "a" * 5000,
]


def _reference_encoding(name: str) -> tiktoken.Encoding:
    """Build `name` with tiktoken's own constructor, reading the shipped file instead of the URL."""

    def load_local(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        local = SHIPPED_BPE_DIR / hashlib.sha1(url.encode()).hexdigest()
        return tiktoken.load.load_tiktoken_bpe(str(local), expected_hash=expected_hash)

    with pytest.MonkeyPatch.context() as mp:
        # An empty cache dir disables tiktoken's caching, so a local path is read directly.
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        mp.setattr(openai_public, "load_tiktoken_bpe", load_local)
        return tiktoken.Encoding(**openai_public.ENCODING_CONSTRUCTORS[name]())


@pytest.fixture(scope="session")
def reference() -> dict[str, tiktoken.Encoding]:
    return {name: _reference_encoding(name) for name in ENCODING_NAMES}


def _forget_encodings() -> None:
    tokens.get_encoding.cache_clear()
    for name in ENCODING_NAMES:
        tiktoken.registry.ENCODINGS.pop(name, None)  # tiktoken's own per-process cache


@pytest.fixture
def fresh_caches():
    _forget_encodings()
    yield
    _forget_encodings()


@pytest.fixture
def no_download(monkeypatch):
    """tiktoken fetches URLs through tiktoken.load.read_file: make any fetch fail loudly."""
    fetched: list[str] = []

    def refuse(blobpath: str) -> bytes:
        fetched.append(blobpath)
        raise OSError(f"download attempted: {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    return fetched


# --- encodings match tiktoken ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_shipped_encoding_is_identical_to_tiktokens_own_definition(name, reference):
    ours = tokens.get_encoding(name)
    ref = reference[name]
    assert ours.name == ref.name
    assert ours._pat_str == ref._pat_str
    assert ours._special_tokens == ref._special_tokens
    assert ours._mergeable_ranks == ref._mergeable_ranks
    assert ours.n_vocab == ref.n_vocab


@pytest.mark.parametrize("name", ENCODING_NAMES)
def test_shipped_files_match_the_urls_and_hashes_tiktoken_publishes(name):
    source = Path(openai_public.__file__).read_text()
    assert f'"{tokens.BPE_URL[name]}",\n        expected_hash="{tokens.BPE_SHA256[name]}"' in source
    assert tokens.bpe_path(name) == SHIPPED_BPE_DIR / hashlib.sha1(tokens.BPE_URL[name].encode()).hexdigest()
    tokens.verify_bpe_file(name)  # would raise on mismatch
    data = tokens.bpe_path(name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == tokens.BPE_SHA256[name]


def test_shipped_files_carry_the_names_tiktoken_looks_up():
    assert sorted(p.name for p in SHIPPED_BPE_DIR.iterdir() if p.suffix != ".md") == [
        "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",  # cl100k_base
        "fb374d419588a4632f3f557e76b4b70aebbca790",  # o200k_base
    ]
    # (That importing budgets.domain.tokens points TIKTOKEN_CACHE_DIR here is shown by the offline
    # subprocess test below: in this process, importing litellm in other tests moves it.)


@pytest.mark.parametrize(
    "model, name", [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")]
)
@pytest.mark.parametrize("text", SAMPLE_TEXTS)
def test_text_token_counts_equal_tiktokens_counts(model, name, text, reference):
    expected = len(reference[name].encode(text, disallowed_special=()))
    assert tokens.count_text_tokens(model, text) == expected


def test_special_token_text_in_user_input_is_counted_as_plain_text():
    text = "<|endoftext|>"
    plain = tokens.get_encoding("o200k_base").encode_ordinary(text)
    assert tokens.count_text_tokens("gpt-4o", text) == len(plain) > 1


_tricky_chunks = st.sampled_from(
    [
        "<|endoftext|>",
        "<|endofprompt|>",
        "\r\n",
        "  ",
        "\t",
        "😀",
        "👩‍👩‍👧",
        "'s",
        "123456",
        "é",
        "\u200b",
    ]
)
_random_text = st.lists(st.one_of(st.text(), _tricky_chunks), max_size=8).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=_random_text)
def test_random_text_counts_equal_tiktokens_counts_for_both_encodings(text, reference):
    for model, name in (("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")):
        assert tokens.count_text_tokens(model, text) == len(
            reference[name].encode(text, disallowed_special=())
        )
        enc = tokens.encoding_for_model(model)
        assert enc.decode(enc.encode(text, disallowed_special=())) == text


def test_encoders_are_cached_per_process():
    assert tokens.get_encoding("o200k_base") is tokens.get_encoding("o200k_base")
    assert tokens.encoding_for_model("gpt-4o") is tokens.encoding_for_model("o1-mini")


def test_concurrent_first_calls_share_one_encoder(fresh_caches, monkeypatch):
    reads: list[str] = []
    read_file_cached = tiktoken.load.read_file_cached

    def counting(blobpath: str, expected_hash: str | None = None) -> bytes:
        reads.append(blobpath)
        return read_file_cached(blobpath, expected_hash)

    monkeypatch.setattr(tiktoken.load, "read_file_cached", counting)
    with ThreadPoolExecutor(max_workers=8) as pool:
        encoders = list(pool.map(tokens.get_encoding, ["cl100k_base"] * 16))
    assert all(enc is encoders[0] for enc in encoders)
    assert reads == [tokens.BPE_URL["cl100k_base"]]  # the ~100k-line file was parsed once


def test_unsupported_encoding_name_is_rejected():
    with pytest.raises(ValueError, match="Unsupported encoding 'p50k_base'"):
        tokens.get_encoding("p50k_base")


# --- model -> encoding -------------------------------------------------------------


@pytest.mark.parametrize(
    "model, expected",
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("o1", "o200k_base"),
        ("o1-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("azure/gpt-4o-mini", "o200k_base"),
        ("openrouter/openai/gpt-4o", "o200k_base"),
        ("GPT-4o", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("azure/gpt-35-turbo", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("davinci-002", "cl100k_base"),
        ("babbage-002", "cl100k_base"),
        ("text-davinci-003", "cl100k_base"),  # p50k in tiktoken, not shipped
        ("claude-3-5-sonnet", "cl100k_base"),
        ("anthropic/claude-3-5-sonnet-20241022", "cl100k_base"),
        ("gemini-1.5-pro", "cl100k_base"),
        ("meta-llama/Llama-3.1-8B-Instruct", "cl100k_base"),
        ("totally-unknown-model", "cl100k_base"),
        ("", "cl100k_base"),
    ],
)
def test_model_maps_to_expected_encoding(model, expected):
    assert tokens.encoding_name_for_model(model) == expected
    assert tokens.encoding_for_model(model).name == expected


# --- chat message framing ----------------------------------------------------------


def _n(name: str, text: str) -> int:
    return len(tokens.get_encoding(name).encode(text, disallowed_special=()))


def test_single_user_message_is_framed_with_three_per_message_and_three_for_the_reply():
    messages = [{"role": "user", "content": "hello"}]
    expected = 3 + _n("o200k_base", "user") + _n("o200k_base", "hello") + 3
    assert tokens.count_message_tokens("gpt-4o", messages) == expected


def test_a_name_key_adds_one_token_plus_its_own_tokens():
    plain = [{"role": "user", "content": "hello"}]
    named = [{"role": "user", "content": "hello", "name": "alice_smith"}]
    extra = tokens.count_message_tokens("gpt-4o", named) - tokens.count_message_tokens(
        "gpt-4o", plain
    )
    assert extra == 1 + _n("o200k_base", "alice_smith")


def test_multiple_messages_each_add_their_framing_and_use_the_models_encoding():
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarise: 日本語 😀"},
        {"role": "assistant", "content": "OK."},
    ]
    expected = 3 + sum(
        3 + _n("cl100k_base", m["role"]) + _n("cl100k_base", m["content"])
        for m in messages
    )
    assert tokens.count_message_tokens("gpt-4", messages) == expected


def test_content_parts_count_text_and_ignore_images():
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png"},
                },
                {"type": "text", "text": " this picture?"},
            ],
        }
    ]
    expected = (
        3
        + _n("o200k_base", "user")
        + _n("o200k_base", "What is in")
        + _n("o200k_base", " this picture?")
        + 3
    )
    assert tokens.count_message_tokens("gpt-4o", messages) == expected


def test_none_content_and_non_string_values_contribute_nothing():
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "x", "type": "function"}],
        }
    ]
    assert (
        tokens.count_message_tokens("gpt-4o", messages)
        == 3 + _n("o200k_base", "assistant") + 3
    )


def test_empty_message_list_costs_only_the_reply_priming():
    assert tokens.count_message_tokens("gpt-4o", []) == 3


def test_special_token_text_in_messages_does_not_raise():
    messages = [{"role": "user", "content": "<|endoftext|>"}]
    assert tokens.count_message_tokens("gpt-4o", messages) > 6


@pytest.mark.parametrize(
    "bad, message",
    [
        (
            {"role": "user", "content": "hi"},
            "messages must be a list of dicts, got dict",
        ),
        ("hello", "messages must be a list of dicts, got str"),
        (None, "messages must be a list of dicts, got NoneType"),
        ([{"role": "user", "content": "hi"}, "oops"], r"messages\[1\] must be a dict"),
    ],
)
def test_messages_that_are_not_a_list_of_dicts_raise_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        tokens.count_message_tokens("gpt-4o", bad)


# --- offline guarantees ------------------------------------------------------------

_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, socket, sys

    def _blocked(*args, **kwargs):
        raise OSError("network access attempted while counting tokens")

    socket.socket.connect = _blocked
    socket.socket.connect_ex = _blocked
    socket.create_connection = _blocked

    # The audit hook also catches connects/DNS from C code that bypasses the patches.
    def _audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "urllib.Request"):
            raise OSError(f"network access attempted: {event} {args!r}")

    sys.addaudithook(_audit)

    import budgets.domain.tokens as t

    print(json.dumps({
        "text_o200k": t.count_text_tokens("gpt-4o", sys.argv[1]),
        "text_cl100k": t.count_text_tokens("claude-3-5-sonnet", sys.argv[1]),
        "messages": t.count_message_tokens("openai/gpt-4o-mini", [{"role": "user", "content": sys.argv[1]}]),
        "django_imported": "django" in sys.modules,
    }))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("users_cache_dir", [False, True])
def test_counting_works_offline_without_any_download_or_cache_dir(tmp_path, reference, users_cache_dir):
    home = tmp_path / "home"
    tmpdir = tmp_path / "tmp"
    users_cache = tmp_path / "users-tiktoken-cache"
    for folder in (home, tmpdir, users_cache):
        folder.mkdir()
    shipped_before = sorted((p.name, p.stat().st_mtime_ns) for p in SHIPPED_BPE_DIR.iterdir())
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    # tiktoken's default cache is $TMPDIR/data-gym-cache; an empty TMPDIR proves it is unused.
    env.update(HOME=str(home), TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1")
    if users_cache_dir:
        # A user's own tiktoken cache (empty here) is neither read nor written.
        env["TIKTOKEN_CACHE_DIR"] = str(users_cache)
    text = "Offline counting: café 😀 <|endoftext|>"

    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT, text],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        check=False,  # asserted below, with stderr in the message
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    o200k = len(reference["o200k_base"].encode(text, disallowed_special=()))
    user = len(reference["o200k_base"].encode("user"))
    assert counts == {
        "text_o200k": o200k,
        "text_cl100k": len(
            reference["cl100k_base"].encode(text, disallowed_special=())
        ),
        "messages": 3 + user + o200k + 3,
        "django_imported": False,
    }
    assert list(home.iterdir()) == []
    assert list(tmpdir.iterdir()) == []
    assert list(users_cache.iterdir()) == []
    assert sorted((p.name, p.stat().st_mtime_ns) for p in SHIPPED_BPE_DIR.iterdir()) == shipped_before


def _install_bpe_dir(monkeypatch, folder: Path) -> None:
    """Point budgets.domain.tokens (and so tiktoken) at `folder` instead of the shipped files."""
    monkeypatch.setattr(tokens, "BPE_DIR", folder)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))


def test_a_corrupted_bpe_file_is_refused_and_kept_without_a_download(
    tmp_path, monkeypatch, fresh_caches, no_download
):
    corrupted = tmp_path / tokens.bpe_path("o200k_base").name
    data = bytearray(tokens.bpe_path("o200k_base").read_bytes())
    data[100] ^= 0x01
    corrupted.write_bytes(bytes(data))
    _install_bpe_dir(monkeypatch, tmp_path)

    with pytest.raises(tokens.BPEFileError, match="SHA-256 mismatch for o200k_base"):
        tokens.build_encoding("o200k_base")
    with pytest.raises(ValueError, match="SHA-256 mismatch for o200k_base"):
        tokens.count_text_tokens("gpt-4o", "hello")

    assert corrupted.read_bytes() == bytes(data)  # left for the operator to inspect
    assert no_download == []


def test_corrupted_bpe_file_in_the_data_dir_is_rejected_by_get_encoding(
    tmp_path, monkeypatch, fresh_caches, no_download
):
    shipped = tokens.bpe_path("cl100k_base")
    (tmp_path / shipped.name).write_bytes(shipped.read_bytes() + b"extra 1\n")
    _install_bpe_dir(monkeypatch, tmp_path)

    with pytest.raises(tokens.BPEFileError, match="SHA-256 mismatch for cl100k_base"):
        tokens.count_text_tokens("gpt-4", "hello")
    assert no_download == []


def test_missing_bpe_file_gives_a_clear_error(tmp_path, monkeypatch, fresh_caches, no_download):
    _install_bpe_dir(monkeypatch, tmp_path)

    with pytest.raises(
        tokens.BPEFileError, match="Cannot read BPE file for o200k_base"
    ):
        tokens.get_encoding("o200k_base")
    assert no_download == []
    assert list(tmp_path.iterdir()) == []


def test_tiktoken_itself_replaces_a_tampered_cache_file_by_downloading_which_is_why_we_check_first(
    tmp_path, monkeypatch, no_download
):
    """Pins the tiktoken behaviour behind verify_bpe_file: if this fails, the pre-check may go."""
    url, expected = tokens.BPE_URL["cl100k_base"], tokens.BPE_SHA256["cl100k_base"]
    cached = tmp_path / tokens.bpe_path("cl100k_base").name
    cached.write_bytes(tokens.bpe_path("cl100k_base").read_bytes() + b"extra 1\n")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    with pytest.raises(OSError, match="download attempted"):
        tiktoken.load.read_file_cached(url, expected)
    assert not cached.exists()  # tiktoken deleted it
    assert no_download == [url]

    # And a fetched file with the wrong hash is refused by tiktoken with a ValueError.
    monkeypatch.setattr(tiktoken.load, "read_file", lambda blobpath: b"tampered")
    with pytest.raises(ValueError, match="Hash mismatch for data downloaded"):
        tiktoken.load.read_file_cached(url, expected)


@pytest.mark.slow
def test_a_later_change_to_tiktoken_cache_dir_does_not_redirect_loading(
    monkeypatch, fresh_caches, no_download, tmp_path
):
    # litellm, for one, points TIKTOKEN_CACHE_DIR at its own folder when imported.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    assert tokens.count_text_tokens("gpt-4o", "hello world") == 2
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(SHIPPED_BPE_DIR)
    assert no_download == []
    assert list(tmp_path.iterdir()) == []
