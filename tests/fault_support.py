"""Private servers to break on purpose: redis-server, PostgreSQL and gunicorn on free loopback ports.

The suite's shared PostgreSQL and Redis are never stopped: every fault is injected into a
process the test started itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.redis_support import PrivateRedis, free_port, need_redis_server
from tests.test_outage import PG_BIN, PrivatePostgres

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")

__all__ = [
    "PG_BIN",
    "Gunicorn",
    "PrivatePostgres",
    "PrivateRedis",
    "RestartablePostgres",
    "free_port",
    "need_gunicorn",
    "need_postgres_server",
    "need_redis_server",
]


def need_postgres_server() -> None:
    if PG_BIN is None:
        pytest.skip("no PostgreSQL server binaries (initdb) under /usr/lib/postgresql/*/bin")


def need_gunicorn() -> None:
    if not GUNICORN.exists():
        pytest.skip("gunicorn is not installed next to this Python")


class RestartablePostgres(PrivatePostgres):
    def restart(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run([*self.as_owner, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", options, "-m", "fast", "-w", "restart"], check=True, capture_output=True)


class Gunicorn:
    """gunicorn serving the project with `workers` processes; env overrides the settings."""

    def __init__(self, log: Path, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.log = log
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "budgetsite.settings_test", **env}
        self.workers = workers
        self.process: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.log.open("w")
        self.process = subprocess.Popen(
            [str(GUNICORN), "budgetsite.wsgi", "-b", f"127.0.0.1:{self.port}", "-w", str(self.workers),
             "--timeout", "60", "--graceful-timeout", "5"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.base}/healthz", timeout=10)
                if len(self.worker_pids()) == self.workers:
                    return
            except OSError:
                assert self.process.poll() is None, self.log.read_text()
            time.sleep(0.2)
        raise AssertionError(f"gunicorn did not start: {self.log.read_text()}")

    def worker_pids(self) -> list[int]:
        """The master's children, from /proc."""
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def call(self, method: str, path: str, key: str, body: Any = None, headers: dict[str, str] | None = None,
             timeout: float = 30) -> tuple[int, dict[str, str], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method, headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                parsed = json.loads(raw or b"null")
            except ValueError:
                parsed = {"raw": raw[:500].decode(errors="replace")}
            return error.code, dict(error.headers), parsed
