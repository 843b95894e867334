"""A database outage, for real: a private PostgreSQL is stopped under a running app, then started again.

The app (gunicorn, one worker) must answer 503 with Retry-After in each protocol's error
shape while the database is down, log the outage once, and serve again once it is back,
without a restart. The shared PostgreSQL of the suite is never touched.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PG_BINS = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
PG_BIN = next((Path(path) for path in PG_BINS if (Path(path) / "initdb").exists()), None)
GUNICORN = Path(sys.executable).with_name("gunicorn")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    """initdb + pg_ctl in a temporary directory on a free port (as the postgres OS user under root)."""

    def __init__(self, base: Path) -> None:
        self.data = base / "data"
        self.log = base / "postgres.log"
        self.port = _free_port()
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.as_owner = ["runuser", "-u", "postgres", "--"]
            shutil.chown(base, "postgres")
        subprocess.run([*self.as_owner, str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                        "-A", "trust", "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", options, "-w", "start"], check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                       check=True, capture_output=True)


class App:
    """gunicorn serving the project against the private database."""

    def __init__(self, base: Path, database_url: str) -> None:
        self.port = _free_port()
        self.log = base / "app.log"
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "budgetsite.settings_test", "DATABASE_URL": database_url,
                    "REDIS_URL": "", "VAR_DIR": str(base / "var"), "DB_CONN_MAX_AGE": "60"}
        self.process: subprocess.Popen | None = None

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                              capture_output=True, text=True)
        return done.stdout

    def start(self) -> None:
        log = self.log.open("w")
        self.process = subprocess.Popen(
            [str(GUNICORN), "budgetsite.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", "1", "--timeout", "60"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10)
                return
            except OSError:  # not listening yet, or still booting
                assert self.process.poll() is None, self.log.read_text()
                time.sleep(0.2)
        raise AssertionError(f"gunicorn did not start: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def call(self, method: str, path: str, key: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, dict(response.headers), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), json.loads(error.read() or b"null")


@pytest.fixture
def outage_site() -> Iterator[tuple[PrivatePostgres, App, str]]:
    if PG_BIN is None:
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin")
    if not GUNICORN.exists():
        pytest.skip("gunicorn is not installed next to this Python")
    base = Path(tempfile.mkdtemp(prefix="bm-outage-"))
    base.chmod(0o755)
    database = PrivatePostgres(base)
    database.start()
    app = App(base, database.url)
    try:
        app.manage("migrate", "--noinput")
        key = app.manage("shell", "-c", (
            "from budgets import services; from decimal import Decimal\n"
            "p = services.project_create(name='acme', timezone='UTC')\n"
            "services.budget_set(project=p, user_id='x', total_budget=Decimal(10), actor='test')\n"
            "print(services.api_key_create(project=p, name='k')[1])"
        )).strip().splitlines()[-1]
        app.start()
        yield database, app, key
    finally:
        app.stop()
        try:
            database.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(base, ignore_errors=True)


def test_a_stopped_database_answers_503_with_retry_after_and_recovers_without_a_restart(outage_site):
    database, app, key = outage_site
    hosted_body = {"project_name": "acme", "user_dict": {"x": {"total_budget": 10.0}}}
    assert app.call("GET", "/api/v1/users/x", key)[0] == 200
    assert app.call("POST", "/set_budget", key, hosted_body)[0] == 200

    database.stop()
    for _ in range(3):
        status, headers, body = app.call("GET", "/api/v1/users/x", key)
        assert status == 503, body
        assert int(headers["Retry-After"]) > 0
        assert body["error"]["type"] == "service_unavailable" and body["error"]["message"]
        status, headers, body = app.call("POST", "/set_budget", key, hosted_body)
        assert status == 503, body
        assert int(headers["Retry-After"]) > 0
        assert body["status"] == "error" and body["message"]
    assert app.process is not None and app.process.poll() is None  # the app itself keeps running

    database.start()
    status, _, body = app.call("GET", "/api/v1/users/x", key)
    assert status == 200, body
    assert body["user"] == "x"
    assert app.call("POST", "/set_budget", key, hosted_body)[0] == 200
    assert app.call("PUT", "/api/v1/users/y/budget", key, {"total_budget": 3})[0] == 201

    # Six failed requests, one log line: the outage is reported once, not once per request.
    assert app.log.read_text().count("the database is not answering") == 1, app.log.read_text()
