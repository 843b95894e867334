"""Rows on bulk data: 3 (console pages), 4 (reset sweep), 8 (seed_demo on PostgreSQL) in-process; 9 (CSV import of
budgets) through gunicorn."""

from __future__ import annotations

import argparse
import math
import random
import re
import secrets
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
        row.add("seed_demo", seconds, "s", target="< 60 s", met=False, status=run.returncode)
        row.note(f"seed_demo failed: {run.stderr.strip()[-500:]}")
        return row
    project = Project.objects.get(name=demo_name(events))
    _DEMO_PROJECTS[events] = project.pk
    count = CostEvent.objects.filter(project=project).count()
    row.add("seed_demo wall time (subprocess)", seconds, "s", target="< 60 s", met=seconds < 60)
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


# --- row 9 --------------------------------------------------------------------------------------

IMPORT_ROWS = 10_000
IMPORT_BASELINE_ROWS = 100


def import_project(size: int) -> tuple[int, str]:
    """A project where half of a `size`-row CSV's users have a budget already; (project id, the CSV).

    Of the rows: half are new users, a third of the others keep their amount and period (unchanged),
    the rest change their amount, and one in five of those its period too.
    """
    from budgets import services
    from budgets.models import Duration, UserBudget

    project = services.project_create(name=f"bench-import-{size}-{time.time_ns()}", actor="bench")
    at = datetime.now(UTC)
    month = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (month + timedelta(days=32)).replace(day=1)
    UserBudget.objects.bulk_create(
        (UserBudget(project=project, user_id=f"user{i:05d}", total_budget=Decimal(10), duration=Duration.MONTHLY,
                    period_start=month, next_reset_at=following, created_at=at, updated_at=at)
         for i in range(0, size, 2)), batch_size=2000)
    lines = ["user_id,total_budget,duration"]
    for i in range(size):
        if i % 2 == 0 and i % 6 == 0:
            lines.append(f"user{i:05d},10,monthly")  # unchanged
        else:
            lines.append(f"user{i:05d},{20 + i % 7}.50,{'weekly' if i % 10 == 4 else 'monthly'}")
    return project.pk, "\n".join(lines) + "\n"


def _multipart(text: str, csrf: str) -> tuple[bytes, str]:
    boundary = f"bench{time.time_ns()}"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrfmiddlewaretoken\"\r\n\r\n{csrf}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"budgets.csv\"\r\n"
            f"Content-Type: text/csv\r\n\r\n{text}\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


def import_once(server: Any, cookie: str, size: int) -> dict[str, Any]:
    """Preview then apply one `size`-row import through the server, as a browser does; the times and checks."""
    from urllib.parse import urlencode

    from budgets.models import AuditLog, UserBudget

    project_id, text = import_project(size)
    url = f"/projects/{project_id}/budget/import/"
    csrf = secrets.token_hex(16)  # a CSRF secret of our own, as the cookie and the form field (Django takes both)
    cookie = f"{cookie}; csrftoken={csrf}"
    body, content_type = _multipart(text, csrf)
    headers = {"Cookie": cookie, "Content-Type": content_type}
    start = time.perf_counter()
    preview_status, preview_page = server.request("POST", url, body=body, headers=headers, timeout=600)
    preview = time.perf_counter() - start
    confirm = urlencode({"csrfmiddlewaretoken": csrf, "text": text, "confirm": "yes"}).encode()
    start = time.perf_counter()
    apply_status, _ = server.request("POST", url, body=confirm, headers={
        "Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}, timeout=600)
    applied = time.perf_counter() - start
    new, unchanged = size // 2, len(range(0, size, 6))
    audits = AuditLog.objects.filter(project_id=project_id, actor="user:bench-staff").count()
    budgets = UserBudget.objects.filter(project_id=project_id).count()
    run = {"preview": preview, "apply": applied, "total": preview + applied, "page_bytes": len(preview_page),
           "statuses": (preview_status, apply_status), "budgets": budgets, "audits": audits, "new": new}
    if (preview_status, apply_status) != (200, 302) or budgets != size or audits != size - unchanged:
        raise RuntimeError(f"the import of {size} rows did not apply every change once: {run}")
    return run


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p99 (nearest rank) of a few measurements."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def row_import(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from bench.harness import gunicorn

    row = Row("9", f"console CSV import of {IMPORT_ROWS:,} budgets (preview + apply) through gunicorn vs the same "
                   f"import of {IMPORT_BASELINE_ROWS} rows")
    client = console_client()
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    rounds = {IMPORT_BASELINE_ROWS: 5, IMPORT_ROWS: 3}
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in rounds}
    with gunicorn(env) as server:
        import_once(server, cookie, IMPORT_BASELINE_ROWS)  # warm both workers' imports and templates
        import_once(server, cookie, IMPORT_BASELINE_ROWS)
        for turn in range(max(rounds.values())):  # alternately: load swings hit both sizes alike
            for size, count in rounds.items():
                if turn < count:
                    runs[size].append(import_once(server, cookie, size))
    small = {part: percentiles([r[part] for r in runs[IMPORT_BASELINE_ROWS]]) for part in ("preview", "apply", "total")}
    big = {part: percentiles([r[part] for r in runs[IMPORT_ROWS]]) for part in ("preview", "apply", "total")}
    for part, label in (("preview", "preview (upload, checks, page)"), ("apply", "apply (confirm, one transaction)"),
                        ("total", "preview + apply")):
        row.add(f"{IMPORT_BASELINE_ROWS} rows: {label}, p50", small[part][0], "s", p99=small[part][1])
    for part, label in (("preview", "preview (upload, checks, page)"), ("apply", "apply (confirm, one transaction)"),
                        ("total", "preview + apply")):
        p50, p99 = big[part]
        target = part == "total"
        row.add(f"{IMPORT_ROWS:,} rows: {label}, p50", p50, "s", ratio=p50 / small[part][0],
                baseline=f"{IMPORT_BASELINE_ROWS} rows", target="< 5 s" if target else "",
                met=p50 < 5 if target else None, p99=p99)
        row.add(f"{IMPORT_ROWS:,} rows: {label}, p99 (max of {len(runs[IMPORT_ROWS])})", p99, "s",
                target="< 5 s" if target else "", met=p99 < 5 if target else None)
    every = [r for size in runs for r in runs[size]]
    row.add("every import applied every change, audited once each", len(every), "imports", met=True, runs=every)
    row.note(f"{IMPORT_ROWS:,}-row CSV: {IMPORT_ROWS // 2:,} new users, {len(range(0, IMPORT_ROWS, 6)):,} unchanged, "
             f"the rest changed (a fifth of them their period too); preview page "
             f"{runs[IMPORT_ROWS][0]['page_bytes'] / 1024:.0f} KiB (the CSV text rides in it for the confirm step)")
    print(f"  {IMPORT_ROWS:,} rows: preview {big['preview'][0]:.2f} s, apply {big['apply'][0]:.2f} s, "
          f"total {big['total'][0]:.2f} s p50 ({big['total'][1]:.2f} s p99); {IMPORT_BASELINE_ROWS} rows: "
          f"{small['total'][0]:.2f} s", flush=True)
    return row
