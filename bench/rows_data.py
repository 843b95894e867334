"""Rows on bulk data, in-process: 3 (console pages), 4 (reset sweep), 8 (seed_demo on PostgreSQL)."""

from __future__ import annotations

import argparse
import random
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.harness import ROOT, Row

DEMO_USERS = 10_000
# events → project id of a seeded demo project (row 8 seeds the 1M one, rows 3 and 7 reuse it).
_DEMO_PROJECTS: dict[int, int] = {}


def demo_name(events: int) -> str:
    return f"bench-demo-{events}"


def demo_project(args: argparse.Namespace, *, events: int, users: int = DEMO_USERS) -> int:
    """A seeded demo project with `users` users and `events` ledger events; seeded once per run."""
    if events not in _DEMO_PROJECTS and args.reuse:
        from budgets.models import CostEvent, Project

        project = Project.objects.filter(name=demo_name(events)).first()
        if project is not None and CostEvent.objects.filter(project=project).count() == events:
            print(f"  reused the seeded project of {events:,} events", flush=True)
            _DEMO_PROJECTS[events] = project.pk
    if events not in _DEMO_PROJECTS:
        from budgets.services.demo import demo_seed

        start = time.perf_counter()
        summary = demo_seed(name=demo_name(events), users=users, days=30, events=events, reset=True)
        print(f"  seeded {events:,} events for {users:,} users in {time.perf_counter() - start:.1f} s", flush=True)
        _DEMO_PROJECTS[events] = summary["project"].pk
    return _DEMO_PROJECTS[events]


# --- row 8 --------------------------------------------------------------------------------------


def ledger_agrees(project_id: int) -> dict[str, bool]:
    """Do the stored spends equal the ledger sums of the current period (budgets, models, project)?"""
    from django.db import connection

    checks = {
        "budgets": """
            SELECT count(*) FROM budgets_userbudget b
            LEFT JOIN (SELECT e.budget_id, sum(e.cost) AS s FROM budgets_costevent e
                       JOIN budgets_userbudget b2 ON b2.id = e.budget_id
                       WHERE e.project_id = %(p)s AND e.created_at >= b2.period_start GROUP BY e.budget_id) l
              ON l.budget_id = b.id
            WHERE b.project_id = %(p)s AND b.current_spend <> coalesce(l.s, 0)""",
        "model_spend": """
            SELECT count(*) FROM (
              SELECT e.budget_id, e.model, sum(e.cost) AS s, sum(e.prompt_tokens) AS p,
                     sum(e.completion_tokens) AS c
              FROM budgets_costevent e JOIN budgets_userbudget b ON b.id = e.budget_id
              WHERE e.project_id = %(p)s AND e.created_at >= b.period_start GROUP BY e.budget_id, e.model) l
            FULL JOIN (SELECT m.* FROM budgets_modelspend m JOIN budgets_userbudget b ON b.id = m.budget_id
                       WHERE b.project_id = %(p)s) m ON m.budget_id = l.budget_id AND m.model = l.model
            WHERE m.spend IS DISTINCT FROM l.s OR m.prompt_tokens IS DISTINCT FROM l.p
               OR m.completion_tokens IS DISTINCT FROM l.c""",
        "project": """
            SELECT count(*) FROM budgets_project p
            WHERE p.id = %(p)s AND p.current_spend <> (
              SELECT coalesce(sum(cost), 0) FROM budgets_costevent WHERE project_id = p.id
              AND created_at >= p.period_start)""",
    }
    out = {}
    with connection.cursor() as cursor:
        for name, sql in checks.items():
            cursor.execute(sql, {"p": project_id})
            out[name] = cursor.fetchone()[0] == 0
    return out


def row_seed(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from budgets.models import CostEvent, Project

    row = Row("8", "manage.py seed_demo --users 10000 --events 1000000 on PostgreSQL")
    events = 1_000_000
    command = [sys.executable, "manage.py", "seed_demo", "--users", str(DEMO_USERS), "--events", str(events),
               "--project", demo_name(events), "--reset"]
    start = time.perf_counter()
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        row.add("seed_demo", seconds, "s", target="< 90 s", met=False, status=run.returncode)
        row.note(f"seed_demo failed: {run.stderr.strip()[-500:]}")
        return row
    project = Project.objects.get(name=demo_name(events))
    _DEMO_PROJECTS[events] = project.pk
    count = CostEvent.objects.filter(project=project).count()
    row.add("seed_demo wall time (subprocess)", seconds, "s", target="< 90 s", met=seconds < 90)
    row.add("ledger events written", count, "events", met=count == events)
    row.add("events/s", count / seconds, "events/s")
    agrees = ledger_agrees(project.pk)
    for name, ok in agrees.items():
        row.add(f"{name} spend equals the ledger", None, "", met=ok)
    print(f"  seed_demo: {seconds:.1f} s for {count:,} events; consistent: {agrees}", flush=True)
    row.extra["stdout"] = run.stdout.strip().splitlines()[:-1]
    return row


# --- row 3 --------------------------------------------------------------------------------------


def console_pages(project_id: int) -> dict[str, str]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT user_id FROM budgets_costevent WHERE project_id = %s GROUP BY user_id "
                       "ORDER BY count(*) DESC LIMIT 1", [project_id])
        hottest = cursor.fetchone()[0]
    base = f"/projects/{project_id}"
    return {
        "overview ?days=30": f"{base}/?days=30",
        "overview ?days=90": f"{base}/?days=90",
        "users sorted by spend": f"{base}/users/?sort=-spend",
        "users sorted by use, searched": f"{base}/users/?sort=-used&q=alice",
        "user detail (hottest user)": f"{base}/users/{hottest}",
        "models": f"{base}/models/",
        "settings": f"{base}/settings/",
    }


def console_client() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True,
                                                                                       "is_superuser": True})
    client = Client()
    client.force_login(user)
    return client


def time_side_by_side(client: Any, small: str, big: str, rounds: int) -> tuple[float, float]:
    """Median seconds of each page, the two fetched alternately: load swings hit both alike."""
    times: dict[str, list[float]] = {small: [], big: []}
    for url in (small, big):  # warm: first fetches fill caches (prices, templates, the planner's)
        if client.get(url).status_code != 200:
            raise RuntimeError(f"{url} did not answer 200")
    for _ in range(rounds):
        for url in (small, big):
            start = time.perf_counter()
            client.get(url)
            times[url].append(time.perf_counter() - start)
    return statistics.median(times[small]), statistics.median(times[big])


def row_console(args: argparse.Namespace, env: dict[str, str]) -> Row:
    sizes = [1_000_000, 10_000_000] if args.huge else [1_000_000]
    row = Row("3", f"console pages at {DEMO_USERS:,} users, server time in-process (Django test client) "
                   "vs the same pages at 10,000 events, fetched alternately")
    small_pages = console_pages(demo_project(args, events=10_000))
    big_pages = {events: console_pages(demo_project(args, events=events)) for events in sizes}
    client = console_client()
    for events in sizes:
        label = f"{events // 1_000_000}M"
        for name, url in big_pages[events].items():
            small, big = time_side_by_side(client, small_pages[name], url, rounds=7)
            ratio = big / small
            row.add(f"{name}, 10k events (alternating with {label})", small * 1000, "ms")
            row.add(f"{name}, {label} events", big * 1000, "ms", ratio=ratio, baseline="10k events",
                    target="<= 2x, < 300 ms", met=ratio <= 2 and big < 0.3)
            print(f"  {name}, {label}: {big * 1000:.0f} ms ({ratio:.1f}x 10k: {small * 1000:.0f} ms)", flush=True)
    return row


# --- row 4 --------------------------------------------------------------------------------------


def copy_budgets(project: Any, count: int, prefix: str, *, duration: str = "daily", due: bool = True,
                 model_spend: bool = True) -> None:
    """`count` budgets `prefix`0.. via COPY, each with one ModelSpend row; daily ones due since yesterday."""
    from django.db import connection

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if due:
        start, end = today - timedelta(days=2), today - timedelta(days=1)
    else:
        start, end = today, (today + timedelta(days=1) if duration == "daily" else None)
    columns = ("project_id", "user_id", "total_budget", "duration", "current_spend", "held", "period_start",
               "next_reset_at", "hosted_model_cost", "created_at", "updated_at")
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY budgets_userbudget ({', '.join(columns)}) FROM STDIN") as copy:
            for i in range(count):
                copy.write_row((project.pk, f"{prefix}{i}", Decimal(10**6) if not due else Decimal(10), duration,
                                Decimal("1.5"), Decimal(0), start, end, "{}", start, start))
        if model_spend:
            cursor.execute("""
                INSERT INTO budgets_modelspend (budget_id, model, spend, prompt_tokens, completion_tokens)
                SELECT id, 'gpt-4o-mini', current_spend, 1000, 500 FROM budgets_userbudget
                WHERE project_id = %s AND user_id LIKE %s""", [project.pk, prefix + "%"])
        cursor.execute("ANALYZE budgets_userbudget")
        cursor.execute("ANALYZE budgets_modelspend")


class StatementTimes:
    """An execute wrapper that sums time and count per statement kind ("UPDATE budgets_userbudget", ...)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            table = re.search(r'\b(?:FROM|INTO|UPDATE)\s+"(\w+)"', sql)
            key = sql.split(None, 1)[0].upper() + (f" {table.group(1)}" if table else "")
            self.seconds[key] += time.perf_counter() - start
            self.count[key] += 1

    def top(self, n: int = 8) -> list[tuple[str, int, float]]:
        return sorted(((k, self.count[k], round(v, 2)) for k, v in self.seconds.items()), key=lambda r: -r[2])[:n]


def loop_per_budget(project: Any) -> list[float]:
    """Seconds to reset each due budget of `project` one at a time (the baseline)."""
    from budgets import services
    from budgets.models import UserBudget

    sample = list(UserBudget.objects.filter(project=project).values_list("pk", flat=True))
    random.Random(1).shuffle(sample)
    times = []
    for pk in sample:
        begun = time.perf_counter()
        services.reset_due_budgets(ids=[pk])
        times.append(time.perf_counter() - begun)
    return times


def row_sweep(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from django.db import connection

    from budgets import services
    from budgets.models import BudgetPeriod

    row = Row("4", "reset sweep (services.reset_due_budgets) vs one budget at a time (200 budgets, half before "
                   "and half after the sweep, extrapolated)")
    sizes = [100_000, 1_000_000] if args.big else [100_000]
    for size in sizes:
        project = services.project_create(name=f"bench-sweep-{size}-{time.time_ns()}", actor="bench")
        before_project = services.project_create(name=f"bench-loop-a-{size}-{time.time_ns()}", actor="bench")
        after_project = services.project_create(name=f"bench-loop-b-{size}-{time.time_ns()}", actor="bench")
        start = time.perf_counter()
        copy_budgets(before_project, 100, "loop")
        copy_budgets(after_project, 100, "loop")
        copy_budgets(project, size, "u")
        print(f"  {size:,} due budgets created in {time.perf_counter() - start:.1f} s", flush=True)
        per_budget = loop_per_budget(before_project)
        statements = StatementTimes()
        begun = time.perf_counter()
        with connection.execute_wrapper(statements):
            done = services.reset_due_budgets(project=project)
        sweep = time.perf_counter() - begun
        per_budget += loop_per_budget(after_project)
        loop_each = statistics.mean(per_budget)
        closed = BudgetPeriod.objects.filter(project=project).count()
        label = f"{size // 1000}k" if size < 1_000_000 else f"{size // 1_000_000}M"
        row.add(f"one budget at a time, per budget (sample of {len(per_budget)})", loop_each * 1000, "ms")
        row.add(f"one at a time, extrapolated to {label}", loop_each * size, "s")
        row.add(f"sweep of {label} due budgets", sweep, "s", ratio=loop_each * size / sweep,
                baseline="extrapolated loop (speed-up)", target=("< 10 s, " if size == 100_000 else "") + ">= 20x",
                met=(sweep < 10 or size != 100_000) and loop_each * size / sweep >= 20, reset=done,
                statements=statements.top(12))
        row.add(f"budgets reset / periods closed ({label})", done, "budgets", met=done == size and closed == size,
                periods=closed)
        sql_s = sum(statements.seconds.values())
        row.note(f"sweep {label}: {sum(statements.count.values()):,} statements, {sql_s:.1f} s of the {sweep:.1f} s "
                 "waiting on SQL; most time: " + "; ".join(f"{k} x{c} {t:.1f} s" for k, c, t in statements.top(4)))
        print(f"  sweep {label}: {sweep:.1f} s ({done:,} reset); loop {loop_each * 1000:.1f} ms each -> "
              f"{loop_each * size / sweep:.1f}x", flush=True)
    return row
