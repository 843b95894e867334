"""Budget Manager benchmarks: `make bench` (all rows) or `make bench ROWS=1,2` (.venv/bin/python bench/run.py).

Runs on PostgreSQL (a fresh database named bench_*, dropped at the end unless --keep) with
production-like settings (DEBUG off, a real SECRET_KEY, Redis db 7 as the cache), starts gunicorn
itself for the HTTP rows, drives it with wrk, and prints one table per row. Each row also writes
bench/results/<row>.json. Every figure is a ratio to a baseline measured in the same run.

Rows:
  1      POST /api/v1/users/{u}/costs (hot user, 1,000 users, Idempotency-Key, ?enforce=true,
         reserve + settle) vs GET /healthz; SQL statements per record, in-process
  1b     POST .../check and GET /api/v1/users/{u} vs GET /healthz
  2      LiteLLM hosted /set_budget and /get_budget at 10k and 100k users vs json round trip
  3      console pages at 1M ledger events (10M with --huge) vs the same pages at 10k events
  4      reset sweep of 100k due budgets (1M with --big) vs one budget at a time
  5      BudgetManager.update_cost at 1k/10k/100k users (1M with --big) vs litellm's local BudgetManager
  6      projected cost of a 10,000-token conversation vs raw tiktoken and litellm.token_counter
  7      CSV export of 1M events through gunicorn: peak RSS of the worker, rows/s
  8      manage.py seed_demo --users 10000 --events 1000000 (target < 60 s)
  9      console CSV import of 10,000 budgets (preview, apply) through gunicorn vs the same import of 100 rows
  micro  the older in-process comparisons (price cache, encoder cache, cost given vs priced)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_ROWS = ("8", "1", "1b", "2", "3", "4", "5", "6", "7", "9", "micro")
HTTP_ROWS = ("1", "1b", "2", "7", "9")
PG = os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/7")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=os.environ.get("ROWS") or ",".join(ALL_ROWS),
                        help="Comma-separated rows to run (default: all). Also the ROWS environment variable.")
    parser.add_argument("--big", action="store_true", help="Also the big sizes: 1M budgets (4), 1M users (5).")
    parser.add_argument("--huge", action="store_true", help="Row 3 at 10M ledger events too (slow: minutes).")
    parser.add_argument("--quick", action="store_true", help="Row 2 at 10k users only; rows 3 and 7 reuse data.")
    parser.add_argument("--duration", type=int, default=5, help="Seconds per wrk run (default 5; keep it short).")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections (default 4; 2 threads).")
    parser.add_argument("--database", default="bench_run", help="Database name (must start with bench_).")
    parser.add_argument("--keep", action="store_true", help="Keep the bench database at the end.")
    parser.add_argument("--threads", type=int, default=1,
                        help="gunicorn threads per worker (default 1: sync workers; more: gthread workers).")
    parser.add_argument("--synchronous-commit-off", action="store_true",
                        help="Evidence only, never a product setting: the bench's gunicorn connects with "
                             "synchronous_commit=off (a COMMIT no longer waits for the WAL flush; a crash could "
                             "lose acknowledged records). The bench process itself keeps it on.")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="An environment variable for the bench's gunicorn only (repeatable), e.g. "
                             "DB_CONN_HEALTH_CHECKS=false.")
    parser.add_argument("--reuse", action="store_true",
                        help="Reuse the database (from an earlier --keep run) and the demo projects seeded in it.")
    args = parser.parse_args()
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in ALL_ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; rows are {', '.join(ALL_ROWS)}")
    if not args.database.startswith("bench_"):
        parser.error("--database must start with bench_")
    return args


def server_env(database: str) -> dict[str, str]:
    """Production-like settings for the bench process and the gunicorn it starts."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "budgetsite.settings",
        "DATABASE_URL": f"{PG}/{database}",
        "REDIS_URL": REDIS,
        "SECRET_KEY": os.environ.get("BENCH_SECRET_KEY") or secrets.token_urlsafe(50),
        "DEBUG": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        # Plain HTTP on the loopback: no TLS redirect, no secure-only cookies for the bench client.
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "LOG_LEVEL": "WARNING",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONPATH": str(ROOT),
    }


def gunicorn_env(env: dict[str, str], args: argparse.Namespace) -> dict[str, str]:
    """The environment of the gunicorn the HTTP rows start: the bench's, plus the opt-in switches."""
    server = {**env, "BENCH_GUNICORN_THREADS": str(args.threads)}
    if args.synchronous_commit_off:
        # dj-database-url passes the query string to psycopg as connection options.
        server["DATABASE_URL"] = env["DATABASE_URL"] + "?options=-c%20synchronous_commit%3Doff"
    server.update(item.split("=", 1) for item in args.server_env)
    return server


def gunicorn_description(args: argparse.Namespace) -> str:
    kind = f"-w 2 --threads {args.threads} (gthread)" if args.threads > 1 else "-w 2 (sync)"
    extra = [*(["synchronous_commit=off"] if args.synchronous_commit_off else []), *args.server_env]
    return kind + (f"; {', '.join(extra)}" if extra else "")


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_database(name: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> dict[str, Any]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg = cursor.fetchone()[0]
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"nproc": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1), "postgresql": pg,
            "python": platform.python_version(), "commit": commit, "when": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def main() -> None:
    args = parse_args()
    env = server_env(args.database)
    os.environ.update(env)
    if not args.reuse:
        recreate_database(args.database)

    import django

    django.setup()
    from django.core.management import call_command

    from bench import rows_data, rows_http, rows_inproc
    from bench.harness import Row

    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    context = {"machine": machine(), "command": " ".join(["bench/run.py", *sys.argv[1:]]),
               "wrk": f"-t2 -c{args.connections} -d{args.duration}s", "gunicorn": gunicorn_description(args)}
    print(f"Machine: {json.dumps(context['machine'])}")
    print(f"Database {args.database}; wrk {context['wrk']}; gunicorn {context['gunicorn']}. The machine is shared: "
          "load runs are kept short and figures are ratios to a baseline of the same run.\n", flush=True)
    http_env = gunicorn_env(env, args)  # the HTTP rows' gunicorn; every other row runs as before
    runners = {
        "1": rows_http.row_record, "1b": rows_http.row_reads, "2": rows_http.row_hosted, "7": rows_http.row_export,
        "3": rows_data.row_console, "4": rows_data.row_sweep, "8": rows_data.row_seed, "9": rows_data.row_import,
        "5": rows_inproc.row_manager, "6": rows_inproc.row_projected, "micro": rows_inproc.row_micro,
    }
    done: list[Row] = []
    try:
        for key in [r for r in ALL_ROWS if r in args.rows]:
            print(f"== row {key} ==", flush=True)
            begun = time.perf_counter()
            load_before = os.getloadavg()[0]
            try:
                row = runners[key](args, http_env if key in HTTP_ROWS else env)
            except Exception as exc:  # one broken row must not hide the others
                row = Row(key, "failed")
                row.note(f"the row failed: {type(exc).__name__}: {exc}")
                import traceback

                traceback.print_exc()
            row.extra["seconds"] = round(time.perf_counter() - begun, 1)
            # The machine is shared: how busy it was says how far to trust the absolute figures.
            row.extra["load_average_1min"] = [round(load_before, 1), round(os.getloadavg()[0], 1)]
            row.note(f"load average (1 min) {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end "
                     f"on {os.cpu_count()} cores; row took {row.extra['seconds']:.0f} s")
            row.save(context)
            print(row.table() + "\n", flush=True)
            done.append(row)
    finally:
        if args.keep or args.reuse:
            print(f"kept database {args.database}")
        else:
            drop_database(args.database)
    print(f"All rows in {time.perf_counter() - started:.0f} s; results in bench/results/.")
    print("\n\n".join(r.table() for r in done))


if __name__ == "__main__":
    main()
