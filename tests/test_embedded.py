"""Embedded mode: `manage.py run_embedded` runs web, worker and beat from one command, and stops them all."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.celery_worker

BASE_DIR = Path(settings.BASE_DIR)
STARTUP_TIMEOUT = 180  # a fresh database loads the whole price table; CI machines can be slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def embedded_env(var_dir: Path) -> dict[str, str]:
    """The environment of `make run` on a laptop: no DATABASE_URL, no REDIS_URL, its own VAR_DIR."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(DJANGO_SETTINGS_MODULE="budgetsite.settings", VAR_DIR=str(var_dir), PYTHONUNBUFFERED="1")
    return env


def manage(var_dir: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=BASE_DIR, env=embedded_env(var_dir),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Embedded:
    """A running `manage.py run_embedded`, its output collected by a thread."""

    def __init__(self, var_dir: Path) -> None:
        self.var_dir = var_dir
        self.port = free_port()
        self.lines: list[str] = []
        # Whether the port accepted a connection at the moment the "running at" line was read.
        self.accepting_when_announced: bool | None = None
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "run_embedded", "--port", str(self.port), "--no-seed"],
            cwd=BASE_DIR, env=embedded_env(var_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "running at http://" in line and self.accepting_when_announced is None:
                self.accepting_when_announced = accepts_connections(self.port)
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def children(self) -> dict[str, int]:
        # honcho's announcement, after its "HH:MM:SS system | " prefix.
        started = re.findall(r"\| (web|worker|beat) started \(pid=(\d+)\)$", self.output, re.MULTILINE)
        return {name: int(pid) for name, pid in started}

    def wait_until_up(self) -> int:
        """Wait for /healthz (or the admin login where there is no health check); returns its status."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"run_embedded exited with {self.process.returncode}:\n{self.output}")
            for path in ("/healthz", "/admin/login/"):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                        if len(self.children()) == 3:
                            return response.status
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:
                        raise
                except OSError:
                    break  # not listening yet
            time.sleep(0.5)
        raise AssertionError(f"the site did not come up:\n{self.output}")

    def stop(self, sig: int | None = signal.SIGINT) -> int:
        """Send `sig` (None: none, just wait) and return the exit code."""
        if sig is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=90)
        finally:
            self.reader.join(5)


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_until(predicate, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedded-var")


@pytest.fixture
def embedded(var_dir) -> Iterator[Embedded]:
    running = Embedded(var_dir)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(30)
        for pid in running.children().values():
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)


SET_UP_A_DUE_BUDGET = """
from datetime import timedelta
from decimal import Decimal
from django.utils.timezone import now
from budgets import services
from budgets.models import UserBudget
from budgets.tasks import reset_sweep
from budgets.domain.usage import Usage
project = services.project_create(name="embedded-test")
budget, _ = services.budget_set(project=project, user_id="alice", total_budget="10", duration="daily", actor="test")
services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 0, 0), cost=Decimal("1.5"), source="api")
UserBudget.objects.filter(pk=budget.pk).update(next_reset_at=now() - timedelta(seconds=1))
reset_sweep.delay()
print("queued")
"""


def test_run_embedded_serves_the_site_resets_budgets_with_its_worker_and_stops_on_ctrl_c(embedded, var_dir):
    assert embedded.wait_until_up() == 200
    password = (var_dir / "admin_password").read_text().strip()
    # printed once run_embedded's own poll sees the server answer: a moment after this test's poll may
    assert wait_until(lambda: f"Log in as admin with password {password}" in embedded.output), embedded.output
    assert f"running at http://127.0.0.1:{embedded.port}/" in embedded.output
    assert embedded.accepting_when_announced is True  # announced only once the web server listens

    # Another process (like the web server would) queues the sweep through the embedded broker.
    assert "queued" in manage(var_dir, "shell", "-c", SET_UP_A_DUE_BUDGET)
    db = var_dir / "db.sqlite3"

    def reset_by_worker() -> bool:
        with sqlite3.connect(db) as conn:
            return conn.execute(
                "SELECT count(*) FROM budgets_budgetperiod WHERE user_id = 'alice' AND reason = 'period_end'"
            ).fetchone()[0] == 1

    assert wait_until(reset_by_worker), embedded.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT current_spend FROM budgets_userbudget WHERE user_id = 'alice'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM django_celery_beat_periodictask WHERE name LIKE 'budgets:%'"
                            ).fetchone() == (4,)  # the sweep, the alert outbox, forecasts, anomalies
    children = embedded.children()
    assert set(children) == {"web", "worker", "beat"}
    assert wait_until(lambda: "beat: Starting..." in embedded.output), embedded.output

    assert embedded.stop(signal.SIGINT) == 0
    assert "Stopped." in embedded.output
    assert [name for name, pid in children.items() if is_running(pid)] == []


def test_when_a_child_dies_run_embedded_stops_the_others_and_fails(embedded, var_dir):
    embedded.wait_until_up()
    children = embedded.children()
    # The superuser and its password survive a restart.
    password = (var_dir / "admin_password").read_text().strip()
    # printed once run_embedded's own poll sees the server answer: a moment after this test's poll may
    assert wait_until(lambda: f"Log in as admin with password {password}" in embedded.output), embedded.output

    os.kill(children["worker"], signal.SIGKILL)

    assert embedded.stop(None) == 1
    assert re.search(r"\| worker stopped \(rc=-9\)$", embedded.output, re.MULTILINE), embedded.output
    assert "a process stopped unexpectedly (exit code -9); the others were stopped" in embedded.output
    assert [name for name, pid in children.items() if is_running(pid)] == []


def test_run_embedded_on_a_taken_port_says_so_in_one_line_and_starts_nothing(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "manage.py", "run_embedded", "--port", str(port), "--no-seed"],
                              cwd=BASE_DIR, env=embedded_env(tmp_path), capture_output=True, text=True,
                              timeout=60, check=False)

    assert done.returncode != 0
    assert done.stdout == ""  # no URL, no login, no "Migrating", no child started
    errors = [line for line in done.stderr.splitlines() if "port" in line]
    assert errors == [f"CommandError: port {port} on 127.0.0.1 is in use; "
                      f"set PORT (PORT={port + 1} make run) or pass --port to use another"]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "db.sqlite3").exists()  # it stopped before migrating
