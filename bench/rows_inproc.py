"""In-process rows: 5 (BudgetManager.update_cost vs LiteLLM's local one), 6 (projected cost), micro."""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from bench.harness import Row, median_time

INPUT_TEXT = "Summarise the quarterly report for the support team, with the three biggest risks. " * 4
OUTPUT_TEXT = "The quarter closed with lower ticket volume, but escalations grew in two regions. " * 3


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


# --- row 5 --------------------------------------------------------------------------------------


def ours_per_call(sizes: list[int], calls: int, rounds: int = 4) -> dict[int, tuple[float, int]]:
    """Median seconds per budgets.manager.BudgetManager.update_cost on random users, per project size,
    and the SQL statements of one call. The sizes take turns (`rounds` of calls/rounds each), so the
    shared machine's load drifts over all of them alike."""
    from bench.rows_data import copy_budgets
    from bench.rows_http import count_statements
    from budgets.manager import BudgetManager

    managers = {}
    for users in sizes:
        manager = BudgetManager(f"bench-manager-{users}-{time.time_ns()}")
        copy_budgets(manager.project, users, "u", duration="monthly", due=False, model_spend=False)
        managers[users] = manager
    rng = random.Random(5)

    def call(users: int) -> None:
        managers[users].update_cost(f"u{rng.randrange(users)}", model="gpt-4o-mini", input_text=INPUT_TEXT,
                                    output_text=OUTPUT_TEXT)

    for users in sizes:  # warm
        for _ in range(5):
            call(users)
    per_round: dict[int, list[float]] = {users: [] for users in sizes}
    batch = max(1, calls // rounds)
    for _ in range(rounds):
        for users in sizes:
            start = time.perf_counter()
            for _ in range(batch):
                call(users)
            per_round[users].append((time.perf_counter() - start) / batch)
    out = {}
    for users in sizes:
        real, *_ = count_statements(lambda users=users: call(users))
        out[users] = (statistics.median(per_round[users]), len(real))
    return out


def litellm_per_call(users: int, calls: int) -> float:
    """Mean seconds per litellm.BudgetManager(client_type="local").update_cost + save_data, in a temp dir.

    update_cost also starts a thread that saves the whole file; the stray threads are waited for
    inside the measurement, since they are part of what each call costs.
    """
    import litellm

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as tmp:
        os.chdir(tmp)
        try:
            manager = litellm.BudgetManager(project_name="bench", client_type="local")
            for i in range(users):
                manager.create_budget(total_budget=10.0, user=f"u{i}")  # no duration: no save thread per user
            manager.save_data()
            rng = random.Random(users)
            picks = [f"u{rng.randrange(users)}" for _ in range(calls + 1)]
            manager.update_cost(picks[0], model="gpt-4o-mini", input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
            manager.save_data()
            _join_strays()
            start = time.perf_counter()
            for user in picks[1:]:
                manager.update_cost(user, model="gpt-4o-mini", input_text=INPUT_TEXT, output_text=OUTPUT_TEXT)
                manager.save_data()
            _join_strays()
            return (time.perf_counter() - start) / calls
        finally:
            os.chdir(cwd)


def _join_strays() -> None:
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join(timeout=60)


def row_manager(args: argparse.Namespace, env: dict[str, str]) -> Row:
    row = Row("5", "budgets.manager.BudgetManager.update_cost(user, model, input_text, output_text) vs "
                   "litellm.BudgetManager(client_type='local') update_cost + save_data")
    row.note("ours: median of 4 interleaved rounds of 50 calls per size; litellm: mean of a few calls per size, "
             "the save threads update_cost starts waited for inside the measurement")
    sizes = [1_000, 10_000, 100_000] + ([1_000_000] if args.big else [])
    litellm_calls = {1_000: 100, 10_000: 30, 100_000: 6, 1_000_000: 2}
    ours_by_size = ours_per_call(sizes, 200)
    first = ours_by_size[sizes[0]][0]
    for users in sizes:
        ours, statements = ours_by_size[users]
        theirs = litellm_per_call(users, litellm_calls[users])
        label = size_label(users)
        flat = ours / first
        row.add(f"ours, {label} users", ours * 1000, "ms/call", ratio=flat, baseline="ours at 1k",
                target="<= 1.5x" if users > 1_000 else "", met=flat <= 1.5 if users > 1_000 else None,
                statements_per_call=statements)
        row.add(f"litellm local, {label} users", theirs * 1000, "ms/call", calls=litellm_calls[users])
        speedup = theirs / ours
        row.add(f"speed-up over litellm, {label} users", speedup, "x", ratio=speedup, baseline="litellm local",
                target=">= 100x" if users == 100_000 else "", met=speedup >= 100 if users == 100_000 else None)
        print(f"  {label}: ours {ours * 1000:.2f} ms/call ({flat:.2f}x 1k, {statements} SQL statements), "
              f"litellm {theirs * 1000:.1f} ms/call -> {speedup:.1f}x", flush=True)
    return row


# --- row 6 --------------------------------------------------------------------------------------


WORDS = ("budget", "model", "token", "latency", "customer", "invoice", "the", "a", "of", "and", "to", "in",
         "report", "quarter", "escalation", "region", "support", "answer", "question", "because", "summary",
         "deploy", "error", "retry", "cache", "prompt", "completion", "user", "project", "spend", "limit", "2026",
         "ticket", "priority", "résumé", "naïve", "東京", "data", "pipeline", "schema", "migration", "index")


def conversation(tokens: int) -> tuple[list[dict[str, str]], str]:
    """A chat of alternating turns with about `tokens` o200k tokens of content, and its joined text."""
    from budgets.domain import tokens as budget_tokens

    encoding = budget_tokens.get_encoding("o200k_base")
    rng = random.Random(6)
    messages: list[dict[str, str]] = [{"role": "system", "content": "You are a helpful assistant."}]
    count = 0
    while count < tokens:
        words = [rng.choice(WORDS) for _ in range(rng.randint(40, 160))]
        content = " ".join(words).capitalize() + "."
        messages.append({"role": "user" if len(messages) % 2 else "assistant", "content": content})
        count += len(encoding.encode(content))
    return messages, "".join(m["content"] for m in messages)


def row_projected(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from budgets import selectors, services
    from budgets.domain import tokens as budget_tokens

    row = Row("6", "projected cost of a 10,000-token conversation (gpt-4o, in-process selectors) vs raw tiktoken")
    project = services.project_create(name=f"bench-projected-{time.time_ns()}", actor="bench")
    budget, _ = services.budget_set(project=project, user_id="u", total_budget=Decimal(100), actor="bench")
    messages, text = conversation(10_000)
    encoding = budget_tokens.get_encoding("o200k_base")
    raw_tokens = len(encoding.encode_ordinary(text))
    rounds = 15
    cases: dict[str, Callable[[], Any]] = {
        # encode_ordinary: plain BPE, without encode()'s scan for special tokens (the strictest baseline).
        "raw tiktoken encode_ordinary (o200k_base), joined text": lambda: encoding.encode_ordinary(text),
        "projected cost (selectors.projected_cost)": lambda: selectors.projected_cost(budget, "gpt-4o", messages),
    }
    try:
        import litellm

        litellm.token_counter(model="gpt-4o", messages=messages)
        cases["litellm.token_counter(model='gpt-4o', messages)"] = lambda: litellm.token_counter(
            model="gpt-4o", messages=messages)
    except Exception as exc:  # litellm is optional here
        row.note(f"litellm.token_counter unavailable: {exc}")
    for fn in cases.values():
        fn()  # warm
    # Interleaved rounds: the machine's noise hits every variant alike.
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            times[name].append(median_time(fn, 1)[0])
    medians = {name: statistics.median(t) for name, t in times.items()}
    raw = medians["raw tiktoken encode_ordinary (o200k_base), joined text"]
    projected = selectors.projected_cost(budget, "gpt-4o", messages)
    for name, seconds in medians.items():
        is_ours = name.startswith("projected")
        row.add(name, seconds * 1000, "ms", ratio=seconds / raw, baseline="raw tiktoken",
                target="<= 1.5x" if is_ours else "", met=seconds / raw <= 1.5 if is_ours else None)
        print(f"  {name}: {seconds * 1000:.2f} ms ({seconds / raw:.2f}x raw tiktoken)", flush=True)
    row.extra.update(messages=len(messages), raw_tokens=raw_tokens, prompt_tokens=projected.prompt_tokens)
    row.note(f"{len(messages)} messages, {raw_tokens:,} content tokens, {projected.prompt_tokens:,} prompt tokens "
             "with chat framing")
    return row


# --- micro: the older in-process comparisons ----------------------------------------------------


def compare(row: Row, name: str, base_name: str, base: Callable[[], object], other_name: str,
            other: Callable[[], object], rounds: int) -> None:
    """Both variants interleaved; the ratio of medians (other / base)."""
    a_times, b_times = [], []
    for _ in range(rounds):
        a_times.append(median_time(base, 1)[0])
        b_times.append(median_time(other, 1)[0])
    ma, mb = statistics.median(a_times), statistics.median(b_times)
    row.add(f"{name}: {base_name}", ma * 1000, "ms")
    row.add(f"{name}: {other_name}", mb * 1000, "ms", ratio=mb / ma, baseline=base_name)
    print(f"  {name}: {base_name} {ma * 1000:.1f} ms, {other_name} {mb * 1000:.1f} ms -> {mb / ma:.1f}x", flush=True)


def row_micro(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from budgets import services
    from budgets.domain import pricing, tokens
    from budgets.domain.usage import Usage
    from budgets.models import ModelPrice

    row = Row("micro", "in-process comparisons: caches and the cost of pricing (median of 5, interleaved)")
    models = list(ModelPrice.objects.values_list("model", flat=True)[:200])

    def cached() -> None:
        for _ in range(5):
            for model in models:
                pricing.get_price(model)

    def uncached() -> None:
        for _ in range(5):
            for model in models:
                pricing.Price.from_row(ModelPrice.objects.get(model=model))

    compare(row, "price lookup x1000", "cached get_price", cached, "query per lookup", uncached, 5)
    text = "The quick brown fox jumps over the lazy dog. " * 20
    compare(row, "token count x20", "cached encoder", lambda: [tokens.count_text_tokens("gpt-4o", text)
                                                               for _ in range(20)],
            "encoder per call", lambda: [len(tokens.build_encoding("o200k_base").encode(text)) for _ in range(20)], 3)
    project = services.project_create(name=f"bench-micro-{time.time_ns()}", actor="bench")
    services.budget_set(project=project, user_id="u", total_budget=Decimal(10**6), actor="bench")

    def record(cost: Decimal | None) -> Callable[[], None]:
        def run() -> None:
            for _ in range(100):
                services.cost_record(project=project, user_id="u", usage=Usage("gpt-4o", 1000, 200), cost=cost,
                                     source="api")
        return run

    compare(row, "cost_record x100", "cost given", record(Decimal("0.0045")), "priced from the table", record(None), 5)
    return row
