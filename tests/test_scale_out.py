"""Beyond one machine: 2 web instances, 2 Celery workers and 1 beat against one PostgreSQL and one Redis.

Processes on this machine stand in for hosts. Load goes through both web instances at once;
spend stays exact, the workers deliver the alerts the load crossed, and beat's sweep (run by
a worker) resets a budget whose period ended. docs/PERFORMANCE.md has the throughput figures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.models import Alert, CostEvent, Project, UserBudget
from budgets.services.schedule import beat_schedule_install
from tests.api_helpers import new_key
from tests.celery_support import WebhookReceiver
from tests.redis_support import spare_redis_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
USERS = [f"u{i}" for i in range(20)]
RECORDS = 240
COST = Decimal("0.01")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, processes: list[subprocess.Popen], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        for process in processes:
            assert process.poll() is None, f"{process.args[:3]} exited: {process.stderr.read().decode()[-2000:]}"
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=2):
            return True
    except OSError:
        return False


def _post(call: tuple[str, str, str, dict]) -> int:
    base, key, path, body = call
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_two_web_instances_two_workers_and_beat_share_one_database_and_one_redis(tmp_path):
    redis_url = spare_redis_url()  # a database of its own, emptied first
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    test_database = "/" + connection.settings_dict["NAME"]
    database_url = urlunsplit(urlsplit(os.environ["DATABASE_URL"])._replace(path=test_database))
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "budgetsite.settings_test", "DATABASE_URL": database_url,
           "REDIS_URL": redis_url, "DB_CONN_MAX_AGE": "0", "VAR_DIR": str(tmp_path)}

    beat_schedule_install()
    with WebhookReceiver() as receiver:
        project = services.project_create(name="scale", max_budget="1000")
        services.project_update(project=project, actor="test", alert_thresholds=[50, 100],
                                alert_webhook_url=receiver.url)
        key = new_key(project)
        for user in USERS:
            services.budget_set(project=project, user_id=user, total_budget="0.1", actor="test")
        # A budget whose period ended while "no worker ran": beat's first sweep must reset it.
        due = services.budget_set(project=project, user_id="sleeper", total_budget="5", duration="daily",
                                  actor="test")[0]
        services.cost_record(project=project, user_id="sleeper", usage=_usage(), cost="1", source="api")
        UserBudget.objects.filter(pk=due.pk).update(next_reset_at=utcnow() - timedelta(minutes=1))

        ports = [_free_port(), _free_port()]
        webs = [subprocess.Popen([str(BIN / "gunicorn"), "budgetsite.wsgi:application", "-w", "2", "-b",
                                  f"127.0.0.1:{port}", "--timeout", "120", "--log-level", "warning"],
                                 cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for port in ports]
        workers = [subprocess.Popen([sys.executable, "-m", "celery", "-A", "budgetsite", "worker", "-c", "1",
                                     "-n", f"w{i}@%h", "--loglevel", "warning"],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for i in range(2)]
        beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "budgetsite", "beat", "--loglevel", "warning",
                                 "-s", str(tmp_path / "beat-schedule")],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        everything = [*webs, *workers, beat]
        try:
            bases = [f"http://127.0.0.1:{port}" for port in ports]
            _wait(lambda: all(_up(base) for base in bases), "both web instances", everything)

            calls = [(bases[i % 2], key, f"/api/v1/users/{USERS[i % len(USERS)]}/costs",
                      {"model": "gpt-4o-mini", "cost": float(COST)}) for i in range(RECORDS)]
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(_post, calls))
            assert answers.count(201) == RECORDS, answers

            # Spend is exact whichever instance took each record.
            project.refresh_from_db()
            ledger = CostEvent.objects.filter(project=project).aggregate(total=Sum("cost"))["total"]
            assert ledger == RECORDS * COST + 1
            assert project.current_spend == ledger
            per_user = RECORDS // len(USERS) * COST
            assert set(UserBudget.objects.filter(project=project, user_id__in=USERS)
                       .values_list("current_spend", flat=True)) == {per_user}

            # Every user spent $0.12 of $0.10, past 50 % and 100 %: 40 alerts, each delivered once by some worker.
            _wait(lambda: Alert.objects.filter(project=project, delivered_at__isnull=False).count() == 40,
                  "the workers to deliver 40 alerts", everything)
            assert len(receiver.received) == 40
            assert len({r.json()["alert_id"] for r in receiver.received}) == 40

            # Beat queued the sweep at start; a worker ran it: the sleeper's period started anew.
            _wait(lambda: UserBudget.objects.get(pk=due.pk).current_spend == 0, "beat's sweep", everything)
            assert Project.objects.get(pk=project.pk).current_spend == ledger  # the project's period is lifetime
        finally:
            for process in everything:
                process.send_signal(signal.SIGTERM)
            for process in everything:
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()


def _usage():
    from budgets.domain.usage import Usage

    return Usage("gpt-4o-mini", 0, 0)
