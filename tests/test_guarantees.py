"""Concurrency proofs against the real server: gunicorn with 4 worker processes, clients in several processes.

Each test starts from committed data (transactional_db), sends its requests from many client
processes at once, then checks the database: no level admits more than fits, and every
spend total equals the ledger, exactly (Decimal).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.db.models import Sum

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import CostEvent, ModelSpend, Project, Reservation, UserBudget
from tests.api_helpers import new_key

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
CLIENT_PROCESSES = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(django_db_setup):
    """gunicorn -w 4 on the test database, started once for the module; yields its base URL.

    Each test still starts from its own committed data (transactional_db empties the tables after
    it): the server holds no database connection between requests (DB_CONN_MAX_AGE=0), and what
    its workers cache is keyed by API key, and every test makes keys of its own.
    """
    url = urlsplit(os.environ["DATABASE_URL"])
    test_db_url = urlunsplit(url._replace(path="/" + connection.settings_dict["NAME"]))
    port = _free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "budgetsite.settings_test",
        "DATABASE_URL": test_db_url,
        "DB_CONN_MAX_AGE": "0",
    }
    process = subprocess.Popen(
        [
            str(GUNICORN),
            "budgetsite.wsgi:application",
            "-w",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "--timeout",
            "120",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None:
                    raise RuntimeError(process.stderr.read().decode()) from None
                time.sleep(0.1)
        else:
            raise RuntimeError("gunicorn did not start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _send(call: tuple) -> tuple[int, dict]:
    """One request: (base, key, method path, body, headers) → (status, JSON body)."""
    base, key, path, body, headers = call
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read(), parse_float=Decimal)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read(), parse_float=Decimal)


def _burst(calls: list[tuple]) -> list[tuple[int, dict]]:
    """All of `calls` at once from this process's threads."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(_send, calls))


def _sequence(calls: list[tuple]) -> list[tuple[int, dict]]:
    return [_send(call) for call in calls]


def at_once(calls: list[tuple], processes: int = CLIENT_PROCESSES) -> list[tuple[int, dict]]:
    """Send every call at the same time from `processes` client processes (threads within each)."""
    chunks = [calls[i::processes] for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return [answer for chunk in pool.map(_burst, chunks) for answer in chunk]


def statuses(answers: list[tuple[int, dict]]) -> Counter:
    return Counter(status for status, _ in answers)


@pytest.fixture
def project():
    return services.project_create(name="acme", timezone="UTC")


def budgets_for(project: Project, users: list[str], total: str) -> None:
    for user in users:
        services.budget_set(project=project, user_id=user, total_budget=Decimal(total), actor="test")


def ledger_sum(**filters) -> Decimal:
    return CostEvent.objects.filter(**filters).aggregate(total=Sum("cost"))["total"] or Decimal(0)


def assert_no_holds() -> None:
    assert set(UserBudget.objects.values_list("held", flat=True)) <= {Decimal(0)}
    assert set(Project.objects.values_list("held", flat=True)) == {Decimal(0)}


# --- enforced records -----------------------------------------------------------------------------


def test_enforced_records_never_pass_the_project_cap(server, project):
    services.project_update(project=project, max_budget=Decimal("1.00"), actor="test")
    users = [f"u{i}" for i in range(50)]
    budgets_for(project, users, "10")
    key = new_key(project)

    answers = at_once(
        [(server, key, f"/api/v1/users/{u}/costs?enforce=true", {"model": "x", "cost": 0.05}, {}) for u in users]
    )

    assert statuses(answers) == {201: 20, 402: 30}, statuses(answers)
    assert {body["error"]["scope"] for status, body in answers if status == 402} == {"project"}
    project.refresh_from_db()
    assert project.current_spend == Decimal("1.00") == ledger_sum()
    assert CostEvent.objects.count() == 20


def test_enforced_records_never_pass_the_user_budget(server, project):
    budgets_for(project, ["alice"], "1.00")
    key = new_key(project)

    answers = at_once([(server, key, "/api/v1/users/alice/costs?enforce=true", {"model": "x", "cost": 0.05}, {})] * 50)

    assert statuses(answers) == {201: 20, 402: 30}, statuses(answers)
    assert {body["error"]["scope"] for status, body in answers if status == 402} == {"user"}
    alice = UserBudget.objects.get(user_id="alice")
    assert alice.current_spend == Decimal("1.00") == ledger_sum()


# --- reservations ---------------------------------------------------------------------------------


def _reserve_settle_release(server: str, key: str, users: list[str], scope: str) -> None:
    answers = at_once([(server, key, f"/api/v1/users/{u}/reservations", {"estimated_cost": 0.07}, {}) for u in users])

    # $1.00 holds floor(1.00 / 0.07) = 14 reservations of $0.07, never more.
    assert statuses(answers) == {201: 14, 402: 36}, statuses(answers)
    assert {body["error"]["scope"] for status, body in answers if status == 402} == {scope}
    held_rows = UserBudget.objects.aggregate(total=Sum("held"))["total"]
    assert Project.objects.get().held == Decimal("0.98") == held_rows
    admitted = [body["id"] for status, body in answers if status == 201]

    settle, release = admitted[::2], admitted[1::2]
    calls = [(server, key, f"/api/v1/reservations/{rid}/settle", {"model": "x", "cost": 0.06}, {}) for rid in settle]
    calls += [(server, key, f"/api/v1/reservations/{rid}/release", {}, {}) for rid in release]
    assert statuses(at_once(calls)) == {200: 14}

    assert_no_holds()
    settled = Decimal("0.06") * len(settle)
    assert Project.objects.get().current_spend == settled == ledger_sum()
    assert UserBudget.objects.aggregate(total=Sum("current_spend"))["total"] == settled
    assert Counter(Reservation.objects.values_list("status", flat=True)) == Counter(
        {"settled": len(settle), "released": len(release)}
    )


def test_concurrent_reservations_never_hold_more_than_the_user_budget(server, project):
    budgets_for(project, ["alice"], "1.00")
    _reserve_settle_release(server, new_key(project), ["alice"] * 50, "user")


def test_concurrent_reservations_never_hold_more_than_the_project_cap(server, project):
    services.project_update(project=project, max_budget=Decimal("1.00"), actor="test")
    users = [f"u{i}" for i in range(50)]
    budgets_for(project, users, "10")
    _reserve_settle_release(server, new_key(project), users, "project")


# --- totals ---------------------------------------------------------------------------------------


def test_many_concurrent_records_add_up_exactly_everywhere(server, project):
    users = [f"u{i}" for i in range(100)]
    budgets_for(project, [*users, "hot"], "1000000")
    key = new_key(project)
    models = ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"]
    per_process = [
        [
            (
                server,
                key,
                f"/api/v1/users/{'hot' if i % 2 else users[(p * 31 + i) % 100]}/costs",
                {"model": models[i % 3], "prompt_tokens": 1000 + p * 7 + i, "completion_tokens": 17 * i + p},
                {},
            )
            for i in range(250)
        ]
        for p in range(8)
    ]

    with multiprocessing.get_context("fork").Pool(8) as pool:
        answers = [a for chunk in pool.map(_sequence, per_process) for a in chunk]

    assert statuses(answers) == {201: 2000}, statuses(answers)
    assert CostEvent.objects.count() == 2000
    total = ledger_sum()
    assert Project.objects.get().current_spend == total
    assert UserBudget.objects.aggregate(total=Sum("current_spend"))["total"] == total
    assert ModelSpend.objects.aggregate(total=Sum("spend"))["total"] == total
    for budget in UserBudget.objects.all():
        ledger = ledger_sum(user_id=budget.user_id)
        per_model = ModelSpend.objects.filter(budget=budget).aggregate(total=Sum("spend"))["total"] or Decimal(0)
        assert budget.current_spend == ledger == per_model, budget.user_id
    hot = UserBudget.objects.get(user_id="hot")
    assert hot.current_spend == ledger_sum(user_id="hot") and CostEvent.objects.filter(user_id="hot").count() == 1000


# --- idempotency ----------------------------------------------------------------------------------


def test_one_idempotency_key_from_ten_clients_records_once(server, project):
    budgets_for(project, ["alice"], "10")
    key = new_key(project)
    call = (
        server,
        key,
        "/api/v1/users/alice/costs",
        {"model": "gpt-4o-mini", "prompt_tokens": 100, "completion_tokens": 10},
        {"Idempotency-Key": "once"},
    )

    answers = at_once([call] * 10)
    for index, (status, _) in enumerate(answers):
        while status == 409:  # allowed while the first is in flight; then the same answer
            status, body = _send(call)
            answers[index] = (status, body)

    assert statuses(answers) == {201: 10}, statuses(answers)
    assert len({json.dumps(body, sort_keys=True, default=str) for _, body in answers}) == 1
    assert CostEvent.objects.count() == 1
    alice = UserBudget.objects.get(user_id="alice")
    assert alice.current_spend == ledger_sum() == CostEvent.objects.get().cost


def test_one_idempotency_key_from_ten_clients_reserves_once(server, project):
    budgets_for(project, ["alice"], "10")
    key = new_key(project)
    call = (server, key, "/api/v1/users/alice/reservations", {"estimated_cost": 1}, {"Idempotency-Key": "once"})

    answers = at_once([call] * 10)

    assert statuses(answers) == {201: 10}, statuses(answers)
    assert len({json.dumps(body, sort_keys=True, default=str) for _, body in answers}) == 1
    assert Reservation.objects.count() == 1
    assert UserBudget.objects.get().held == Decimal(1) == Project.objects.get().held


# --- lock order -----------------------------------------------------------------------------------


def test_native_records_and_hosted_merges_at_once_never_deadlock_into_a_500(server, project):
    users = [f"u{i}" for i in range(10)]
    budgets_for(project, users, "10")
    key = new_key(project)
    records = [
        (server, key, f"/api/v1/users/{users[i % 10]}/costs", {"model": "x", "cost": 0.01}, {}) for i in range(60)
    ]
    merges = [
        (
            server,
            key,
            "/set_budget",
            {"project_name": "acme", "user_dict": {u: {"total_budget": 10 + i % 2} for u in users}},
            {},
        )
        for i in range(20)
    ]
    calls = [call for pair in zip(records[:20], merges, strict=True) for call in pair] + records[20:]

    answers = at_once(calls, processes=8)

    assert statuses(answers) == {201: 60, 200: 20}, [body for status, body in answers if status >= 300][:3]
    project.refresh_from_db()
    assert project.current_spend == Decimal("0.60") == ledger_sum()


# --- a reset sweep while records stream in --------------------------------------------------------


def test_a_sweep_running_while_records_stream_in_loses_nothing_and_splits_no_record(server, project):
    """30 daily budgets whose period just ended, $1 spent in it each; 5 client processes record
    through gunicorn while sweeps run over and over: every record lands in exactly one period."""
    from datetime import timedelta

    from django.utils.timezone import now as utcnow

    from budgets.models import BudgetPeriod

    users = [f"d{i}" for i in range(30)]
    for user in users:
        services.budget_set(project=project, user_id=user, total_budget=Decimal(1000), duration="daily", actor="t")
        services.cost_record(project=project, user_id=user, usage=Usage("gpt-4o-mini", 0, 0), cost="1",
                             source="api")
    # The day ended a minute ago (no worker ran): the budgets are due.
    yesterday = utcnow() - timedelta(days=1, minutes=1)
    UserBudget.objects.filter(project=project).update(period_start=yesterday,
                                                      next_reset_at=yesterday + timedelta(days=1))
    CostEvent.objects.filter(project=project).update(created_at=yesterday + timedelta(hours=1))
    key = new_key(project)
    calls = [(server, key, f"/api/v1/users/{users[i % 30]}/costs", {"model": "gpt-4o-mini", "cost": 0.25}, {})
             for i in range(150)]
    answers: list[tuple[int, dict]] = []
    burst = threading.Thread(target=lambda: answers.extend(at_once(calls)))
    burst.start()
    # Some records reach their due budgets before any sweep (the lazy reset's part), then sweeps
    # keep running for as long as the rest stream in.
    deadline = time.monotonic() + 60
    while CostEvent.objects.filter(project=project).count() < 30 + 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    sweeps = 0
    while burst.is_alive():
        sweeps += services.reset_due_budgets()
    burst.join()
    sweeps += services.reset_due_budgets()

    assert statuses(answers) == {201: 150}, statuses(answers)
    assert sweeps + BudgetPeriod.objects.filter(reason="lazy").count() == 30  # by a sweep or lazily, once
    # Each budget's ended day closed once, with exactly the $1 recorded in it...
    assert BudgetPeriod.objects.filter(project=project).count() == 30
    assert set(BudgetPeriod.objects.values_list("spend", flat=True)) == {Decimal(1)}
    # ...and every streamed record counted in the new day, none lost, none in both.
    for user in users:
        budget = UserBudget.objects.get(project=project, user_id=user)
        assert budget.current_spend == Decimal("1.25"), user  # 5 × $0.25
    assert ledger_sum() == Decimal(30) + Decimal("37.5")
    assert Project.objects.get(pk=project.pk).current_spend == ledger_sum()  # a lifetime cap: never reset
