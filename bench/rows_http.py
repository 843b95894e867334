"""Rows over HTTP through gunicorn: 1 (record), 1b (reads), 2 (LiteLLM hosted), 7 (CSV export)."""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import statistics
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bench.harness import Row, Server, WrkResult, gunicorn, median_time, status_kib, wrk

RECORD_BODY = '{"model":"gpt-4o-mini","prompt_tokens":1000,"completion_tokens":500}'
TAGGED_BODY = '{"model":"gpt-4o-mini","prompt_tokens":1000,"completion_tokens":500,"tags":["summarizer"]}'
SPREAD_USERS = 1000
TRANSACTION_CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\b",
                                 re.IGNORECASE)


# --- fixtures -----------------------------------------------------------------------------------


def api_project(name: str, users: int) -> tuple[Any, str]:
    """A project with users "hot" and u0 .. u{users-1} (big budgets, no reset) and an API key."""
    from django.utils.timezone import now

    from budgets import services
    from budgets.models import Duration, UserBudget

    project = services.project_create(name=f"{name}-{time.time_ns()}", actor="bench")
    at = now()
    UserBudget.objects.bulk_create(
        (UserBudget(project=project, user_id=user, total_budget=Decimal(10**6), duration=Duration.NONE,
                    period_start=at, next_reset_at=None, created_at=at, updated_at=at)
         for user in ["hot", *(f"u{i}" for i in range(users))]),
        batch_size=2000,
    )
    _, key = services.api_key_create(project=project, name="bench", actor="bench")
    return project, key


def limits_project(name: str, users: int) -> str:
    """api_project with five limits applying to every record: the project's, the team's (every user is in
    it), each user's (tokens), the key's (requests) and the tag "summarizer"'s; large enough never to refuse."""
    from budgets.models import Limit, Team, TeamMember
    from budgets.services.limit_windows import window_of

    project, key = api_project(name, users)
    everyone = ["hot", *(f"u{i}" for i in range(users))]
    team = Team.objects.create(project=project, name="everyone")
    TeamMember.objects.bulk_create([TeamMember(team=team, project=project, user_id=user) for user in everyone],
                                   batch_size=2000)
    start, resets_at = window_of("month", project, team.created_at)
    big = Decimal(10**9)

    def limit(scope: str, subject: str, unit: str = "usd") -> Limit:
        return Limit(project=project, scope=scope, subject=subject, unit=unit, window="month", amount=big,
                     window_start=start, resets_at=resets_at)

    Limit.objects.bulk_create([limit("project", ""), limit("team", "everyone"), limit("key", "bench", "requests"),
                               limit("tag", "summarizer"), *(limit("user", user, "tokens") for user in everyone)],
                              batch_size=2000)
    return key


def wrk_line(row: Row, name: str, result: WrkResult, base: WrkResult | None, *, target: float | None,
             baseline: str = "healthz") -> None:
    ratio = result.rps / base.rps if base else None
    met = None if target is None or ratio is None else ratio >= target
    row.add(name, result.rps, "req/s", ratio=ratio, baseline=baseline if base else "",
            target=f">= {target}x" if target else "", met=met, p50_ms=round(result.p50_ms, 2),
            p99_ms=round(result.p99_ms, 2), wrk=result.as_dict())
    print(f"  {name}: {result.rps:.0f} req/s, p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms"
          + (f", {result.non_2xx} non-2xx" if result.non_2xx else "")
          + (f" -> {ratio:.2f}x {baseline}" if ratio else ""), flush=True)
    if result.non_2xx:
        row.note(f"{name}: {result.non_2xx} of {result.requests} answers were not 2xx")


def healthz_baseline(server: Server, args: argparse.Namespace) -> WrkResult:
    return wrk(server.base + "/healthz", duration=args.duration, connections=args.connections)


def mean_baseline(first: WrkResult, second: WrkResult) -> WrkResult:
    """The mean of the healthz runs before and after a row's workloads (the machine drifts)."""
    return WrkResult(first.requests + second.requests, first.seconds + second.seconds, (first.rps + second.rps) / 2,
                     (first.p50_ms + second.p50_ms) / 2, (first.p99_ms + second.p99_ms) / 2,
                     first.non_2xx + second.non_2xx, first.errors or second.errors)


# --- SQL statements per request, in-process -----------------------------------------------------


def count_statements(fn: Any) -> tuple[list[str], list[str], float, float]:
    """(real statements, transaction control, their seconds, its seconds) that `fn` sends, as Django sees them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        fn()
    real, control = [], []
    real_s = control_s = 0.0
    for query in captured.captured_queries:
        if TRANSACTION_CONTROL.match(query["sql"]):
            control.append(query["sql"])
            control_s += float(query["time"])
        else:
            real.append(query["sql"])
            real_s += float(query["time"])
    return real, control, real_s, control_s


def short(sql: str) -> str:
    sql = re.sub(r"\s+", " ", sql)
    sql = re.sub(r'SELECT .*? FROM', "SELECT … FROM", sql, count=1) if sql.startswith("SELECT") else sql
    return sql[:150]


def sql_per_record(row: Row, key: str) -> None:
    """Statements per recorded call through the whole API request, and through the service alone."""
    from django.test import Client

    from budgets import services
    from budgets.api.auth import api_key_auth  # noqa: F401  (import cost outside the measurement)
    from budgets.domain.usage import Usage
    from budgets.models import Project

    client = Client()
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"}
    counter = iter(range(10**6))

    def post(query: str = "", idempotent: bool = False) -> Any:
        extra = {"HTTP_IDEMPOTENCY_KEY": f"sql-{time.time_ns()}-{next(counter)}"} if idempotent else {}
        response = client.post(f"/api/v1/users/u1/costs{query}", data=RECORD_BODY, content_type="application/json",
                               **headers, **extra)
        assert response.status_code == 201, (response.status_code, response.content[:300])
        return response

    cases = {"record (API request)": lambda: post(), "record + Idempotency-Key (API request)": lambda: post(
        idempotent=True), "record ?enforce=true (API request)": lambda: post("?enforce=true")}
    post()  # warm: price cache, encoders, first-request setup
    project = services.api_key_authenticate(key).project  # type: ignore[union-attr]
    results: dict[str, Any] = {}
    for name, fn in cases.items():
        results[name] = count_statements(fn)
    project = Project.objects.get(pk=project.pk)

    def service() -> None:
        services.cost_record(project=project, user_id="u2", usage=Usage("gpt-4o-mini", 1000, 500), source="api")

    service()
    results["cost_record (service only)"] = count_statements(service)
    print("  SQL statements per record, in-process (CaptureQueriesContext):")
    for name, (real, control, real_s, control_s) in results.items():
        met = len(real) <= 4
        row.add(f"SQL per {name}", len(real), "statements", target="<= 4", met=met,
                transaction_control=len(control), statements=real, control=control,
                statements_ms=round(real_s * 1000, 2), control_ms=round(control_s * 1000, 2))
        print(f"    {name}: {len(real)} statements ({real_s * 1000:.1f} ms) + {len(control)} transaction control "
              f"({control_s * 1000:.1f} ms)")
        for sql in real:
            print(f"      {short(sql)}")
    row.note("SQL per record counts real statements; transaction control (BEGIN, COMMIT, SAVEPOINT, RELEASE) "
             "is counted apart, in the JSON as transaction_control")


# --- row 1 --------------------------------------------------------------------------------------


def row_record(args: argparse.Namespace, env: dict[str, str]) -> Row:
    row = Row("1", "record cost over HTTP (POST /api/v1/users/{u}/costs, token counts) vs GET /healthz")
    _, key = api_project("bench-record", SPREAD_USERS)
    sql_per_record(row, key)
    nonce = str(time.time_ns())
    limits_key = limits_project("bench-limits", SPREAD_USERS)
    spread_keys = [limits_project(f"bench-spread-{index}", PROJECT_USERS) for index in range(PROJECTS)]
    with gunicorn(env) as server:
        before = healthz_baseline(server, args)
        print(f"  healthz: {before.rps:.0f} req/s, p50 {before.p50_ms:.1f} ms", flush=True)
        runs: list[tuple[str, WrkResult]] = []
        common = {"BM_KEY": key, "BM_BODY": RECORD_BODY}
        for name, extra in (
            ("record, 1 hot user", {"BM_PATH": "/api/v1/users/{user}/costs", "BM_USERS": "1"}),
            ("record, 1,000 users", {"BM_PATH": "/api/v1/users/{user}/costs", "BM_USERS": str(SPREAD_USERS)}),
            ("record + Idempotency-Key, 1,000 users", {"BM_PATH": "/api/v1/users/{user}/costs",
                                                       "BM_USERS": str(SPREAD_USERS), "BM_IDEMPOTENCY": "1",
                                                       "BM_NONCE": nonce}),
            ("record ?enforce=true, 1,000 users", {"BM_PATH": "/api/v1/users/{user}/costs?enforce=true",
                                                   "BM_USERS": str(SPREAD_USERS)}),
            ("record, five applicable limits (project, team, user, key, tag), 1,000 users",
             {"BM_KEY": limits_key, "BM_BODY": TAGGED_BODY, "BM_PATH": "/api/v1/users/{user}/costs",
              "BM_USERS": str(SPREAD_USERS)}),
            ("record ?enforce=true, five applicable limits, 1,000 users",
             {"BM_KEY": limits_key, "BM_BODY": TAGGED_BODY, "BM_PATH": "/api/v1/users/{user}/costs?enforce=true",
              "BM_USERS": str(SPREAD_USERS)}),
        ):
            runs.append((name, wrk(server.base + "/", script="request.lua", env={**common, **extra},
                                   duration=args.duration, connections=args.connections)))
        pair = reserve_settle(row, server, key, args)
        one, spread = one_project_or_eight(spread_keys, args, server)
        after = healthz_baseline(server, args)
        base = mean_baseline(before, after)
        row.add("GET /healthz (baseline, mean of before/after)", base.rps, "req/s", p50_ms=round(base.p50_ms, 2),
                p99_ms=round(base.p99_ms, 2), before=before.as_dict(), after=after.as_dict())
        for name, result in runs:
            wrk_line(row, name, result, base, target=0.5)
        if pair is not None:
            wrk_line(row, "reserve + settle (requests, 2 per pair)", pair, base, target=0.25)
            row.lines[-1]["pairs_per_s"] = round(pair.rps / 2, 1)
        wrk_line(row, "record, five limits, 8 clients, 8 projects (baseline of the next line)", spread, base,
                 target=None)
        wrk_line(row, "record, five limits, 8 clients, one project", one, spread, target=0.7,
                 baseline="8 projects")
    return row


PROJECTS = 8


def one_project_or_eight(keys: list[str], args: argparse.Namespace, server: Server) -> tuple[WrkResult, WrkResult]:
    """Records with five limits from 8 concurrent clients: all to one project, then spread over 8 projects.

    One project's records all lock its row (and its project, team, key and tag limits' rows) in turn:
    what that costs is the first run against the second (the same work, no shared rows)."""
    common = {"BM_BODY": TAGGED_BODY, "BM_PATH": "/api/v1/users/{user}/costs", "BM_USERS": str(PROJECT_USERS)}
    runs = {}
    for name, extra in (("one", {"BM_KEY": keys[0]}), ("spread", {"BM_KEYS": ",".join(keys)}),
                        ("one again", {"BM_KEY": keys[0]}), ("spread again", {"BM_KEYS": ",".join(keys)})):
        runs[name] = wrk(server.base + "/", script="request.lua", env={**common, **extra}, duration=args.duration,
                         connections=PROJECTS, threads=2)
    return (mean_baseline(runs["one"], runs["one again"]), mean_baseline(runs["spread"], runs["spread again"]))


PROJECT_USERS = 100


def reserve_settle(row: Row, server: Server, key: str, args: argparse.Namespace) -> WrkResult | None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    status, body = server.request("POST", "/api/v1/users/hot/reservations", b'{"estimated_cost": 0.01}', headers)
    if status in (404, 405):
        row.add("reserve + settle", None, "", target=">= 0.5x", note=f"endpoint not available ({status})")
        row.note(f"reserve + settle skipped: endpoint not available ({status}) on this server")
        return None
    if status != 201:
        row.note(f"reserve + settle skipped: POST .../reservations answered {status}: {body[:200]!r}")
        return None
    # One connection per thread so each response answers the request just sent.
    return wrk(server.base + "/", script="reserve_settle.lua", env={"BM_KEY": key, "BM_USERS": str(SPREAD_USERS)},
               duration=args.duration, connections=2, threads=2)


# --- row 1b -------------------------------------------------------------------------------------


def row_reads(args: argparse.Namespace, env: dict[str, str]) -> Row:
    row = Row("1b", "budget check and user read over HTTP vs GET /healthz")
    _, key = api_project("bench-reads", SPREAD_USERS)
    with gunicorn(env) as server:
        before = healthz_baseline(server, args)
        runs = []
        for name, extra in (
            ("POST .../check, 1,000 users", {"BM_PATH": "/api/v1/users/{user}/check",
                                            "BM_BODY": '{"estimated_cost": 0.01}'}),
            ("GET /api/v1/users/{u}, 1,000 users", {"BM_PATH": "/api/v1/users/{user}", "BM_METHOD": "GET"}),
        ):
            runs.append((name, wrk(server.base + "/", script="request.lua",
                                   env={"BM_KEY": key, "BM_USERS": str(SPREAD_USERS), **extra},
                                   duration=args.duration, connections=args.connections)))
        after = healthz_baseline(server, args)
        base = mean_baseline(before, after)
        row.add("GET /healthz (baseline, mean of before/after)", base.rps, "req/s", p50_ms=round(base.p50_ms, 2),
                p99_ms=round(base.p99_ms, 2))
        for name, result in runs:
            wrk_line(row, name, result, base, target=0.7)
    return row


# --- row 2 --------------------------------------------------------------------------------------


def hosted_body(project_name: str, users: int, changed: bool = False) -> dict[str, Any]:
    """The LiteLLM client's whole dict, as it posts it after every change."""
    at = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    user_dict = {
        f"u{i}": {"total_budget": 10.0, "duration": 1, "created_at": at, "last_updated_at": at,
                  "current_cost": 0.01, "model_cost": {"gpt-4o": 0.01}}
        for i in range(users)
    }
    if changed:
        user_dict["u0"].update(current_cost=0.02, model_cost={"gpt-4o": 0.02}, last_updated_at=at + 60)
    return {"project_name": project_name, "user_dict": user_dict}


def timed_post(server: Server, path: str, body: bytes, key: str, timeout: float) -> tuple[float, int | str]:
    seconds, status, _ = timed_call(server, path, body, key, timeout)
    return seconds, status


def timed_call(server: Server, path: str, body: bytes, key: str, timeout: float) -> tuple[float, int | str, bytes]:
    """A hosted POST's wall time (request sent to answer read whole), its status and its answer."""
    start = time.perf_counter()
    try:
        status, answer = server.request("POST", path, body, {"Authorization": f"Bearer {key}",
                                                             "Content-Type": "application/json"}, timeout=timeout)
    except (ConnectionResetError, BrokenPipeError):
        # The server refused the body before reading it all (over the size limit) and closed.
        return time.perf_counter() - start, "connection reset while sending", b""
    except (TimeoutError, http.client.HTTPException, OSError) as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}", b""
    return time.perf_counter() - start, status, answer


def hosted_line(row: Row, name: str, seconds: float, status: int | str, base: float, *, target: str = "",
                met: bool | None = None) -> None:
    """A hosted call's time as a ratio to the JSON round trip; a refused or timed-out call is its status."""
    if status == 200:
        row.add(name, seconds * 1000, "ms", ratio=seconds / base, baseline="json round trip", target=target, met=met,
                status=status)
    else:
        shown = f"HTTP {status}" if isinstance(status, int) else f"{status} after {seconds:.0f} s"
        row.add(name, shown, "", target=target, met=False if target else None, status=status,
                seconds=round(seconds, 3))


HOSTED_SAMPLE = 300


def hosted_in_process(row: Row, users: int, base: float) -> None:
    """The merge itself, in-process (no body limit), on a sample of users, extrapolated to `users`.

    Parsing (the server's loads) and the merge are timed; the HTTP round trip, auth and the answer are not.
    A sample: today's merge writes each user through the services, and 10k users take many minutes.
    """
    try:
        from budgets.domain.codec import loads
        from budgets.domain.litellm_records import parse_user_dict
        from budgets.services.hosted import hosted_budget_get, hosted_budget_set
    except ImportError as exc:
        row.note(f"in-process hosted merge not measured: {exc}")
        return
    project, _ = api_project(f"bench-hosted-inproc-{users}", 0)
    size = f"{users // 1000}k"
    for what, changed in (("first save", False), ("one changed", True)):
        raw = json.dumps(hosted_body(project.name, HOSTED_SAMPLE, changed=changed)).encode()
        start = time.perf_counter()
        real, *_ = count_statements(
            lambda raw=raw: hosted_budget_set(
                project=project, records=parse_user_dict(loads(raw)["user_dict"]), actor="bench"))
        seconds = time.perf_counter() - start
        if changed:
            row.add(f"in-process hosted_budget_set one changed, {HOSTED_SAMPLE} users", seconds * 1000, "ms",
                    statements=len(real))
        else:
            row.add(f"in-process hosted_budget_set first save, {HOSTED_SAMPLE} users", seconds * 1000, "ms",
                    statements=len(real), statements_per_user=round(len(real) / HOSTED_SAMPLE, 1))
            row.add(f"  extrapolated to {size} users (linear)", seconds * users / HOSTED_SAMPLE, "s",
                    ratio=seconds * users / HOSTED_SAMPLE / base, baseline=f"json round trip {size}")
        print(f"  in-process {what}, {HOSTED_SAMPLE} users: {seconds:.2f} s, {len(real)} statements "
              f"({len(real) / HOSTED_SAMPLE:.1f} per user)", flush=True)
    start = time.perf_counter()
    hosted_budget_get(project=project)
    row.add(f"in-process hosted_budget_get, {HOSTED_SAMPLE} users", (time.perf_counter() - start) * 1000, "ms")


HOSTED_ROUNDS = {10_000: 8, 100_000: 4}  # rounds of (get_budget, one-changed save) per size


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: with a few rounds, p99 is the slowest."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered), math.ceil(len(ordered) * share)) - 1)]


def hosted_rounds(row: Row, server: Server, project_name: str, key: str, users: int, base: float,
                  timeout: float) -> None:
    """What LiteLLM's client does with several processes: the client loads the dict (get_budget) once, then
    each round another process's get_budget comes in, and the client saves its dict with one more user's cost
    changed (never the same body twice). 2 gunicorn workers: either may answer either call."""
    size = f"{users // 1000}k"
    get_raw = json.dumps({"project_name": project_name}).encode()
    seconds, status, answer = timed_call(server, "/get_budget", get_raw, key, timeout)
    print(f"  get_budget {size}, the client's load (the first after the first save): {seconds:.2f} s, "
          f"status {status}", flush=True)
    hosted_line(row, f"get_budget {size}, the first after the first save (baselines written)", seconds, status,
                base)
    if status != 200:
        return
    client = json.loads(answer)["data"]
    client_raw = json.dumps({"project_name": project_name, "user_dict": client}).encode()
    base, _ = median_time(lambda: json.dumps(json.loads(client_raw)), 5)
    row.add(f"json.loads + json.dumps of the client's dict as loaded, {size} users "
            f"({len(client_raw) / 2**20:.1f} MiB): the baseline of the rounds", base * 1000, "ms")
    gets: list[float] = []
    saves: list[float] = []
    failed: list[str] = []
    added = 0
    rounds = HOSTED_ROUNDS.get(users, 4)
    for index in range(rounds):
        seconds, status, _ = timed_call(server, "/get_budget", get_raw, key, timeout)
        gets.append(seconds)
        if status != 200:
            failed.append(f"get_budget round {index}: {status}")
        record = client[f"u{index}"]  # another user each round
        record["current_cost"] += 0.01
        record["model_cost"]["gpt-4o"] = record["model_cost"].get("gpt-4o", 0) + 0.01
        added += 1
        body = json.dumps({"project_name": project_name, "user_dict": client}).encode()
        seconds, status, _ = timed_call(server, "/set_budget", body, key, timeout)
        saves.append(seconds)
        if status != 200:
            failed.append(f"set_budget round {index}: {status}")
        print(f"  round {index}: get_budget {gets[-1]:.3f} s, set_budget {seconds:.3f} s", flush=True)
    for name, times, target, limit in (("set_budget one user changed, a get_budget before each", saves,
                                        "<= 10x json", 10), ("get_budget", gets, "<= 3x json", 3)):
        p50, p99 = statistics.median(times), percentile(times, 0.99)
        met = not failed and p50 / base <= limit
        row.add(f"{name}, {size} users, {rounds} rounds: p50", p50 * 1000, "ms", ratio=p50 / base,
                baseline="json round trip", target=target, met=met, p50_ms=round(p50 * 1000, 1),
                p99_ms=round(p99 * 1000, 1), times_ms=[round(t * 1000, 1) for t in times])
        row.add(f"  p99 ({rounds} rounds: the slowest)", p99 * 1000, "ms", ratio=p99 / base,
                baseline="json round trip")
        print(f"  {name} {size}: p50 {p50:.3f} s ({p50 / base:.1f}x json), p99 {p99:.3f} s", flush=True)
    for failure in failed:
        row.note(f"{size}: {failure}")
    # Nothing lost, nothing doubled: the server's spend of the changed users is what the client added.
    _, status, answer = timed_call(server, "/get_budget", get_raw, key, timeout)
    served = json.loads(answer)["data"] if status == 200 else {}
    wrong = [user for user in (f"u{index}" for index in range(added))
             if abs(served.get(user, {}).get("current_cost", -1) - client[user]["current_cost"]) > 1e-9]
    if wrong:
        row.note(f"{size}: the server's spend differs from the client's for {len(wrong)} changed users: {wrong[:5]}")
    else:
        print(f"  {size}: the server's spend of the {added} changed users is the client's", flush=True)


def row_hosted(args: argparse.Namespace, env: dict[str, str]) -> Row:
    row = Row("2", "LiteLLM hosted /set_budget and /get_budget vs json.loads + json.dumps of the same body")
    sizes = [10_000] if args.quick else [10_000, 100_000]
    timeout = 600.0  # 100k users on a busy shared machine: minutes (the figures are ratios)
    with gunicorn(env, timeout=int(timeout) + 30) as server:
        for users in sizes:
            project, key = api_project(f"bench-hosted-{users}", 0)
            first = hosted_body(project.name, users)
            first_raw = json.dumps(first).encode()
            base, _ = median_time(lambda raw=first_raw: json.dumps(json.loads(raw)), 5)
            row.add(f"json.loads + json.dumps, {users:,} users ({len(first_raw) / 2**20:.1f} MiB)", base * 1000, "ms")
            size = f"{users // 1000}k"
            seconds, status = timed_post(server, "/set_budget", first_raw, key, timeout)
            stored = status == 200
            print(f"  set_budget first save {size}: {seconds:.2f} s, status {status}", flush=True)
            hosted_line(row, f"set_budget first save, {size} users", seconds, status, base,
                        target="< 3 s" if users == 10_000 else "works",
                        met=(stored and seconds < 3) if users == 10_000 else stored)
            if not stored:
                row.note(f"{size}: the first save answered {status} after {seconds:.1f} s (body "
                         f"{len(first_raw) / 2**20:.1f} MiB); no rounds")
                if users == sizes[0]:
                    hosted_in_process(row, users, base)
                continue
            hosted_rounds(row, server, project.name, key, users, base, timeout)
    return row


# --- row 7 --------------------------------------------------------------------------------------


def staff_session_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True,
                                                                                       "is_superuser": True})
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def stream_lines(server: Server, path: str, cookie: str) -> tuple[int, int, float, int]:
    """(status, lines, seconds, bytes) of a streamed GET, read in 1 MiB chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)
    start = time.perf_counter()
    try:
        conn.request("GET", path, headers={"Cookie": cookie})
        response = conn.getresponse()
        lines = size = 0
        while chunk := response.read(2**20):
            lines += chunk.count(b"\n")
            size += len(chunk)
        return response.status, lines, time.perf_counter() - start, size
    finally:
        conn.close()


def row_export(args: argparse.Namespace, env: dict[str, str]) -> Row:
    from bench.rows_data import demo_project

    row = Row("7", "CSV export of 1,000,000 ledger events through gunicorn")
    big = demo_project(args, events=1_000_000)
    small = demo_project(args, events=10_000)
    cookie = staff_session_cookie()
    with gunicorn(env, timeout=600) as server:
        # Warm each worker on a small export, so the peak below is the big export's own.
        for _ in range(2):
            stream_lines(server, f"/projects/{small}/export.csv", cookie)
        workers = server.worker_pids()
        before = {pid: (status_kib(pid, "VmHWM") or 0) for pid in workers}
        status, lines, seconds, size = stream_lines(server, f"/projects/{big}/export.csv", cookie)
        after = {pid: (status_kib(pid, "VmHWM") or 0) for pid in workers}
    rows = max(lines - 1, 0)
    peak_mib = max(after.values()) / 1024 if after else None
    grew = max(after[pid] - before[pid] for pid in workers) / 1024 if workers else None
    row.add("export status", status, "", met=status == 200)
    row.add("rows exported", rows, "rows", met=rows == 1_000_000)
    row.add("export time", seconds, "s", bytes=size)
    row.add("rows/s", rows / seconds if seconds else None, "rows/s", target=">= 100,000",
            met=rows / seconds >= 100_000 if seconds else False)
    row.add("peak RSS of the worker (VmHWM)", peak_mib, "MiB", target="< 200 MB",
            met=peak_mib is not None and peak_mib * 2**20 < 200e6, before_mib={k: v / 1024 for k, v in before.items()},
            after_mib={k: v / 1024 for k, v in after.items()})
    row.add("VmHWM growth during the export", grew, "MiB", baseline="worker after a 10k-row export")
    print(f"  {rows:,} rows in {seconds:.1f} s, peak RSS {peak_mib:.0f} MiB (grew {grew:.0f} MiB)", flush=True)
    return row
