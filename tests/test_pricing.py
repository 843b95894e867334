"""Tests for budgets.domain.pricing: the shipped price snapshot, loading, LiteLLM-style lookup, exact costs."""

from __future__ import annotations

import functools
import gzip
import importlib
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from budgets.base.errors import InvalidInput, UnknownModel
from budgets.domain import pricing
from budgets.domain.pricing import (
    Price,
    PriceMapError,
    clear_price_cache,
    cost_of_tokens,
    find_price,
    get_price,
    parse_price_map,
)
from budgets.models import ModelPrice
from budgets.services.prices import load_price_map

SNAPSHOT_LABEL = "budgets/data/model_prices.json.gz"


@functools.cache
def snapshot_map() -> dict[str, Any]:
    """The shipped map as LiteLLM wrote it (numbers as Decimal)."""
    with gzip.open(pricing.SNAPSHOT_PATH, "rb") as file:
        return json.loads(file.read(), parse_float=Decimal)


def snapshot_model_count() -> int:
    return len([name for name, entry in snapshot_map().items() if name != "sample_spec" and isinstance(entry, dict)])


def write_map(path: Path, entries: dict[str, Any]) -> Path:
    """Write a price map; floats are written by their shortest repr, e.g. 3.75e-06."""
    path.write_text(json.dumps(entries))
    return path


def prices_in_table() -> dict[str, tuple[Any, ...]]:
    return {
        row[0]: row[1:]
        for row in ModelPrice.objects.values_list("model", "input_cost_per_token", "output_cost_per_token", "source")
    }


@pytest.fixture(autouse=True)
def _fresh_price_cache() -> Iterator[None]:
    # The cache is per process and a test's rollback sends no signal: start and end each test clean.
    clear_price_cache()
    yield
    clear_price_cache()


@pytest.fixture
def empty_price_table(db: None) -> None:
    ModelPrice.objects.all().delete()


@pytest.fixture
def migrations_ran(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("nomigrations", default=False):
        pytest.skip("the test database was built without migrations")


@pytest.fixture
def snapshot_prices(db: None) -> None:
    """The snapshot in the table (migrate loads it; loaded here too when tests run without migrations)."""
    if not ModelPrice.objects.exists():
        load_price_map()


GPT_4O_INPUT = Decimal("2.5e-06")
GPT_4O_OUTPUT = Decimal("1e-05")
GPT_4O_CACHE_READ = Decimal("1.25e-06")


# --- The shipped snapshot and loading -----------------------------------------------------------------


def test_the_snapshot_is_litellms_map_with_thousands_of_models() -> None:
    assert snapshot_model_count() > 4000
    assert snapshot_map()["gpt-4o"]["input_cost_per_token"] == GPT_4O_INPUT


@pytest.mark.slow
@pytest.mark.django_db
def test_the_snapshot_loads_every_model_in_the_map(empty_price_table: None) -> None:
    result = load_price_map()

    assert result == (snapshot_model_count(), 0, 0, 0, SNAPSHOT_LABEL)
    assert ModelPrice.objects.count() == snapshot_model_count()
    assert not ModelPrice.objects.filter(model="sample_spec").exists()
    assert set(ModelPrice.objects.values_list("source", flat=True)) == {"snapshot"}
    gpt_4o = ModelPrice.objects.get(model="gpt-4o")
    assert gpt_4o.provider == "openai"
    assert gpt_4o.mode == "chat"
    assert gpt_4o.input_cost_per_token == GPT_4O_INPUT
    assert gpt_4o.output_cost_per_token == GPT_4O_OUTPUT
    assert gpt_4o.cache_read_input_token_cost == GPT_4O_CACHE_READ
    assert gpt_4o.cache_creation_input_token_cost is None
    assert gpt_4o.max_input_tokens == 128000


@pytest.mark.django_db
def test_the_data_migration_loads_the_snapshot_into_the_historical_model(
    migrations_ran: None, empty_price_table: None
) -> None:
    migration = importlib.import_module("budgets.migrations.0002_load_prices")
    historical_apps = MigrationExecutor(connection).loader.project_state(("budgets", "0001_initial")).apps

    migration.load_snapshot(historical_apps, connection.schema_editor())

    assert ModelPrice.objects.count() == snapshot_model_count()


@pytest.mark.django_db
def test_migrate_has_loaded_the_snapshot(migrations_ran: None) -> None:
    assert ModelPrice.objects.count() == snapshot_model_count()


@pytest.mark.slow
@pytest.mark.django_db
def test_a_second_load_changes_nothing(empty_price_table: None, django_assert_max_num_queries: Any) -> None:
    load_price_map()
    before = prices_in_table()

    with django_assert_max_num_queries(10):  # bulk: never a query per model
        result = load_price_map()

    assert (result.added, result.changed, result.unchanged, result.kept) == (0, 0, snapshot_model_count(), 0)
    assert prices_in_table() == before


@pytest.mark.django_db
def test_a_changed_file_updates_the_changed_prices_exactly(snapshot_prices: None, tmp_path: Path) -> None:
    mini = ModelPrice.objects.get(model="gpt-4o-mini")
    source = write_map(
        tmp_path / "prices.json",
        {
            "gpt-4o": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 3.75e-06,
                "output_cost_per_token": 1e-05,
                "cache_read_input_token_cost": 1.25e-06,
                "max_input_tokens": 128000,
                "max_output_tokens": 16384,
            },
            "gpt-4o-mini": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": float(mini.input_cost_per_token),
                "output_cost_per_token": float(mini.output_cost_per_token),
                "cache_read_input_token_cost": float(mini.cache_read_input_token_cost),
                "max_input_tokens": mini.max_input_tokens,
                "max_output_tokens": mini.max_output_tokens,
            },
            "acme/brand-new-model": {"litellm_provider": "acme", "mode": "chat", "input_cost_per_token": 1.5e-07},
        },
    )
    count_before = ModelPrice.objects.count()

    result = load_price_map(str(source))

    assert (result.added, result.changed, result.unchanged, result.kept) == (1, 1, 1, 0)
    gpt_4o = ModelPrice.objects.get(model="gpt-4o")
    assert gpt_4o.input_cost_per_token == Decimal("0.00000375")
    assert gpt_4o.output_cost_per_token == GPT_4O_OUTPUT
    assert gpt_4o.source == "file"
    mini_after = ModelPrice.objects.get(model="gpt-4o-mini")
    assert (mini_after.source, mini_after.updated_at) == (mini.source, mini.updated_at)
    new = ModelPrice.objects.get(model="acme/brand-new-model")
    assert (new.input_cost_per_token, new.output_cost_per_token, new.cache_read_input_token_cost) == (
        Decimal("0.00000015"),
        Decimal(0),
        None,
    )
    # Models missing from the file are not deleted.
    assert ModelPrice.objects.count() == count_before + 1


@pytest.mark.django_db
def test_it_loads_a_gzipped_file(empty_price_table: None, tmp_path: Path) -> None:
    source = tmp_path / "prices.json.gz"
    source.write_bytes(gzip.compress(b'{"m1": {"input_cost_per_token": 1e-06}, "m2": {}}'))

    result = load_price_map(str(source))

    assert (result.added, result.source) == (2, str(source))
    assert ModelPrice.objects.get(model="m1").input_cost_per_token == Decimal("0.000001")


@pytest.mark.django_db
def test_rows_edited_in_admin_are_kept(snapshot_prices: None, tmp_path: Path) -> None:
    ModelPrice.objects.filter(model="gpt-4o").update(input_cost_per_token=Decimal("0.000002"), source="admin")
    source = write_map(tmp_path / "prices.json", {"gpt-4o": {"input_cost_per_token": 9e-06}})

    result = load_price_map(str(source))

    assert (result.added, result.changed, result.unchanged, result.kept) == (0, 0, 0, 1)
    gpt_4o = ModelPrice.objects.get(model="gpt-4o")
    assert (gpt_4o.input_cost_per_token, gpt_4o.source) == (Decimal("0.000002"), "admin")


@pytest.mark.django_db
def test_it_loads_a_map_from_a_url(empty_price_table: None) -> None:
    body = b'{"url-model": {"litellm_provider": "acme", "input_cost_per_token": 2e-06}}'

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/prices.json"
    try:
        result = load_price_map(url)
    finally:
        server.shutdown()
        server.server_close()

    assert (result.added, result.source) == (1, url)
    row = ModelPrice.objects.get(model="url-model")
    assert (row.input_cost_per_token, row.source) == (Decimal("0.000002"), "url")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"m": {"input_cost_per_token": "cheap"}}', "must be a number"),
        (b'{"m": {"input_cost_per_token": -1e-06}}', "must not be negative"),
        (b'{"m": {"input_cost_per_token": NaN}}', "NaN is not a price"),
        (b"\x1f\x8bnot really gzip", "not a valid gzip file"),
    ],
)
def test_a_bad_map_is_rejected_and_nothing_is_written(
    empty_price_table: None, tmp_path: Path, content: bytes, message: str
) -> None:
    source = tmp_path / "prices.json"
    source.write_bytes(content)

    with pytest.raises(PriceMapError, match=message):
        load_price_map(str(source))

    assert not ModelPrice.objects.exists()


# --- Parsing -------------------------------------------------------------------------------------------


def test_prices_are_parsed_exactly_as_written() -> None:
    prices = parse_price_map('{"m": {"input_cost_per_token": 2.5e-06, "output_cost_per_token": 0.00001}}')

    assert prices["m"]["input_cost_per_token"] == Decimal("0.0000025")
    assert str(prices["m"]["input_cost_per_token"]) == "0.0000025"
    assert isinstance(prices["m"]["output_cost_per_token"], Decimal)


def test_parsing_maps_litellm_fields_to_model_price_fields() -> None:
    prices = parse_price_map(
        b"""{
        "sample_spec": {"input_cost_per_token": 0.0, "max_input_tokens": "max input tokens"},
        "not-an-entry": "text",
        "claude": {"litellm_provider": "anthropic", "mode": "chat", "input_cost_per_token": 3e-06,
                   "output_cost_per_token": 0, "cache_read_input_token_cost": 3e-07,
                   "cache_creation_input_token_cost": 3.75e-06, "max_tokens": 8192,
                   "max_input_tokens": "200k", "max_output_tokens": true},
        "bare": {}
        }"""
    )

    assert set(prices) == {"claude", "bare"}
    assert prices["claude"] == {
        "provider": "anthropic",
        "mode": "chat",
        "input_cost_per_token": Decimal("0.000003"),
        "output_cost_per_token": Decimal(0),
        "cache_read_input_token_cost": Decimal("3e-07"),
        "cache_creation_input_token_cost": Decimal("0.00000375"),
        "max_tokens": 8192,
        "max_input_tokens": None,
        "max_output_tokens": None,
    }
    assert isinstance(prices["claude"]["output_cost_per_token"], Decimal)
    assert prices["bare"]["input_cost_per_token"] == Decimal(0)
    assert prices["bare"]["cache_read_input_token_cost"] is None
    assert prices["bare"]["provider"] == ""


def test_float_noise_beyond_the_columns_places_is_rounded_away() -> None:
    prices = parse_price_map('{"m": {"input_cost_per_token": 2.0000000000000002E-7}}')

    assert prices["m"]["input_cost_per_token"] == Decimal("0.0000002")


@pytest.mark.parametrize("data", ["[]", '"text"', "42", "null"])
def test_parsing_rejects_json_that_is_not_an_object(data: str) -> None:
    with pytest.raises(ValueError, match="a price map is a JSON object"):
        parse_price_map(data)


# --- Lookup --------------------------------------------------------------------------------------------


def model_only_known_with_its_provider_prefix() -> tuple[str, str]:
    """A (bare name, table name) pair such as ("llama-guard-3-8b", "groq/llama-guard-3-8b")."""
    names = {name.lower() for name in snapshot_map()}
    candidates: dict[str, list[str]] = {}
    for name, entry in snapshot_map().items():
        provider = entry.get("litellm_provider") if isinstance(entry, dict) else None
        if provider and name.startswith(f"{provider}/"):
            bare = name.removeprefix(f"{provider}/")
            if bare.lower() not in names:
                candidates.setdefault(bare, []).append(name)
    # One provider only, and no "/" in the bare name (which stripping a prefix could also match).
    unique = sorted((bare, found[0]) for bare, found in candidates.items() if len(found) == 1 and "/" not in bare)
    preferred = [pair for pair in unique if pair[1].startswith(("groq/", "anthropic/"))]
    return (preferred or unique)[0]


@pytest.mark.django_db
def test_it_finds_a_model_by_its_exact_name(snapshot_prices: None) -> None:
    price = get_price("gpt-4o")

    assert price == Price(
        model="gpt-4o",
        input=GPT_4O_INPUT,
        output=GPT_4O_OUTPUT,
        cache_read=GPT_4O_CACHE_READ,
        cache_creation=None,
        provider="openai",
        mode="chat",
    )


@pytest.mark.django_db
def test_it_finds_a_model_with_its_provider_prefix_removed(snapshot_prices: None) -> None:
    assert not ModelPrice.objects.filter(model="openai/gpt-4o").exists()

    assert get_price("openai/gpt-4o").model == "gpt-4o"


@pytest.mark.django_db
def test_it_finds_a_model_with_its_provider_prefix_added(snapshot_prices: None) -> None:
    bare, table_name = model_only_known_with_its_provider_prefix()
    assert not ModelPrice.objects.filter(model=bare).exists()

    assert get_price(bare).model == table_name


@pytest.mark.django_db
def test_with_several_providers_it_prefers_openai_then_alphabetical(empty_price_table: None) -> None:
    for provider in ("zeta", "openai", "alpha"):
        ModelPrice.objects.create(model=f"{provider}/shared-model", provider=provider)
    ModelPrice.objects.create(model="beta/other-model", provider="beta")
    ModelPrice.objects.create(model="alpha/other-model", provider="alpha")
    # The prefix must be the row's provider: this row is not "<provider>/other-model".
    ModelPrice.objects.create(model="aaa/other-model", provider="bedrock")

    assert get_price("shared-model").model == "openai/shared-model"
    assert get_price("other-model").model == "alpha/other-model"


@pytest.mark.django_db
def test_it_finds_a_model_whatever_its_case_but_prefers_the_exact_case(snapshot_prices: None) -> None:
    assert get_price("GPT-4o").model == "gpt-4o"
    assert get_price("OpenAI/GPT-4O").model == "gpt-4o"

    ModelPrice.objects.create(model="GPT-4o", provider="openai", input_cost_per_token=Decimal(1))

    assert get_price("GPT-4o").model == "GPT-4o"
    assert get_price("gpt-4o").model == "gpt-4o"


@pytest.mark.django_db
def test_an_unknown_model_raises_unknown_model(snapshot_prices: None) -> None:
    assert find_price("no-such-model-anywhere") is None
    assert find_price("") is None

    with pytest.raises(UnknownModel, match="unknown model 'no-such-model-anywhere': give prices or a cost") as info:
        get_price("no-such-model-anywhere")
    assert info.value.status == 422


@pytest.mark.django_db
def test_repeated_lookups_do_not_query_the_database(snapshot_prices: None, django_assert_num_queries: Any) -> None:
    get_price("gpt-4o")
    find_price("no-such-model")

    with django_assert_num_queries(0):
        assert get_price("gpt-4o").input == GPT_4O_INPUT
        assert find_price("no-such-model") is None


@pytest.mark.django_db
def test_the_cache_is_cleared_when_a_price_is_edited(snapshot_prices: None) -> None:
    assert get_price("gpt-4o").input == GPT_4O_INPUT
    row = ModelPrice.objects.get(model="gpt-4o")
    row.input_cost_per_token = Decimal("0.000003")
    row.source = "admin"
    row.save()

    assert get_price("gpt-4o").input == Decimal("0.000003")

    assert find_price("brand-new") is None
    new = ModelPrice.objects.create(model="brand-new", input_cost_per_token=Decimal("0.000001"))
    assert get_price("brand-new").input == Decimal("0.000001")

    new.delete()
    assert find_price("brand-new") is None


@pytest.mark.django_db
def test_the_cache_is_cleared_by_a_load(snapshot_prices: None, tmp_path: Path) -> None:
    get_price("gpt-4o")

    load_price_map(str(write_map(tmp_path / "prices.json", {"gpt-4o": {"input_cost_per_token": 4e-06}})))

    assert get_price("gpt-4o").input == Decimal("0.000004")


@pytest.mark.django_db
def test_edits_from_other_processes_show_after_the_ttl(snapshot_prices: None, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(pricing.time, "monotonic", lambda: clock[0])
    get_price("gpt-4o")
    # A queryset update sends no signal, as if another process had edited the row.
    ModelPrice.objects.filter(model="gpt-4o").update(input_cost_per_token=Decimal("0.000005"))

    clock[0] += pricing.CACHE_TTL - 1
    assert get_price("gpt-4o").input == GPT_4O_INPUT
    clock[0] += 2
    assert get_price("gpt-4o").input == Decimal("0.000005")


# --- Cost ----------------------------------------------------------------------------------------------


def test_a_thousand_additions_of_a_tiny_price_add_up_exactly() -> None:
    price = Price(model="m", input=Decimal("0.00000015"), output=Decimal(0))

    total = sum((cost_of_tokens(price, prompt_tokens=1_000_000, completion_tokens=0) for _ in range(1000)), Decimal(0))

    assert total == Decimal(150)
    drift = 0.0
    for _ in range(1000):
        drift += 0.15
    assert drift != 150  # what float arithmetic would have done


@pytest.mark.django_db
def test_a_stored_price_adds_up_exactly_too(empty_price_table: None) -> None:
    ModelPrice.objects.create(model="tiny", input_cost_per_token=Decimal("0.00000015"))
    price = get_price("tiny")

    total = sum((cost_of_tokens(price, prompt_tokens=1_000_000, completion_tokens=0) for _ in range(1000)), Decimal(0))

    assert total == Decimal(150)


@pytest.mark.django_db
def test_gpt_4o_costs_its_input_and_output_prices(snapshot_prices: None) -> None:
    cost = cost_of_tokens(get_price("gpt-4o"), prompt_tokens=1000, completion_tokens=500)

    assert cost == 1000 * Decimal("2.5e-06") + 500 * Decimal("1e-05")
    assert cost == Decimal("0.0075")


@pytest.mark.django_db
def test_cached_prompt_tokens_are_charged_at_the_cache_read_price(snapshot_prices: None) -> None:
    cost = cost_of_tokens(get_price("gpt-4o"), prompt_tokens=1000, completion_tokens=500, cached_tokens=400)

    assert cost == 600 * GPT_4O_INPUT + 400 * GPT_4O_CACHE_READ + 500 * GPT_4O_OUTPUT


def test_cache_creation_tokens_are_charged_apart_from_the_prompt() -> None:
    price = Price(
        model="claude",
        input=Decimal("3e-06"),
        output=Decimal("1.5e-05"),
        cache_read=Decimal("3e-07"),
        cache_creation=Decimal("3.75e-06"),
    )

    cost = cost_of_tokens(price, prompt_tokens=100, completion_tokens=10, cached_tokens=40, cache_creation_tokens=1000)

    assert cost == 60 * Decimal("3e-06") + 40 * Decimal("3e-07") + 1000 * Decimal("3.75e-06") + 10 * Decimal("1.5e-05")


def test_missing_cache_prices_fall_back_to_the_input_price() -> None:
    price = Price(model="m", input=Decimal("0.000002"), output=Decimal("0.000004"))

    cost = cost_of_tokens(price, prompt_tokens=100, completion_tokens=0, cached_tokens=50, cache_creation_tokens=25)

    assert cost == 125 * Decimal("0.000002")


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 0}, "prompt_tokens must not be negative"),
        ({"prompt_tokens": 0, "completion_tokens": -5}, "completion_tokens must not be negative"),
        ({"prompt_tokens": 10, "completion_tokens": 0, "cached_tokens": -1}, "cached_tokens must not be negative"),
        ({"prompt_tokens": 10, "completion_tokens": 0, "cache_creation_tokens": -1}, "must not be negative"),
        ({"prompt_tokens": 10, "completion_tokens": 0, "cached_tokens": 11}, "cannot exceed prompt_tokens"),
        ({"prompt_tokens": 1.5, "completion_tokens": 0}, "must be a whole number"),
        ({"prompt_tokens": True, "completion_tokens": 0}, "must be a whole number"),
    ],
)
def test_invalid_token_counts_are_rejected(counts: dict[str, Any], message: str) -> None:
    price = Price(model="m", input=Decimal("0.000001"), output=Decimal("0.000002"))

    with pytest.raises(InvalidInput, match=message):
        cost_of_tokens(price, **counts)


# --- The management command ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_command_loads_the_snapshot_and_says_what_it_did(empty_price_table: None) -> None:
    out = StringIO()

    call_command("load_prices", stdout=out)

    n = snapshot_model_count()
    assert out.getvalue() == f"Prices: {n} added, 0 changed, 0 unchanged (from {SNAPSHOT_LABEL})\n"
    assert ModelPrice.objects.count() == n

    out = StringIO()
    call_command("load_prices", stdout=out)
    assert out.getvalue() == f"Prices: 0 added, 0 changed, {n} unchanged (from {SNAPSHOT_LABEL})\n"


@pytest.mark.django_db
def test_the_command_loads_a_file_and_reports_admin_rows_kept(snapshot_prices: None, tmp_path: Path) -> None:
    ModelPrice.objects.filter(model="gpt-4o-mini").update(source="admin")
    source = write_map(
        tmp_path / "prices.json",
        {"gpt-4o": {"input_cost_per_token": 5e-06}, "gpt-4o-mini": {}, "acme/new": {}},
    )
    out = StringIO()

    call_command("load_prices", str(source), stdout=out)

    assert out.getvalue() == f"Prices: 1 added, 1 changed, 0 unchanged, 1 edited in admin kept (from {source})\n"
    assert ModelPrice.objects.get(model="gpt-4o").input_cost_per_token == Decimal("0.000005")


@pytest.mark.django_db
def test_the_command_fails_clearly_for_a_missing_file_and_writes_nothing(empty_price_table: None) -> None:
    with pytest.raises(CommandError, match=r"No prices loaded: cannot read /no/such/prices\.json: No such file"):
        call_command("load_prices", "/no/such/prices.json")

    assert not ModelPrice.objects.exists()


@pytest.mark.django_db
def test_the_command_fails_clearly_for_bad_json_and_writes_nothing(snapshot_prices: None, tmp_path: Path) -> None:
    source = tmp_path / "prices.json"
    source.write_text('{"gpt-4o": {"input_cost_per_token": 1e-06}, ')
    before = prices_in_table()

    with pytest.raises(CommandError, match=r"No prices loaded: .*prices\.json: not valid JSON"):
        call_command("load_prices", str(source))

    assert prices_in_table() == before


@pytest.mark.django_db
def test_the_command_fails_clearly_for_an_unreachable_url(empty_price_table: None) -> None:
    # Port 9 on localhost (discard) has nothing listening here: refused at once, no real network.
    with pytest.raises(CommandError, match=r"No prices loaded: cannot download http://127\.0\.0\.1:9/prices\.json"):
        call_command("load_prices", "http://127.0.0.1:9/prices.json")

    assert not ModelPrice.objects.exists()
