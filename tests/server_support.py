"""A real server for concurrency proofs: gunicorn with 4 workers on the test database, and clients
that send many requests at once from several processes (tests/test_guarantees.py, test_limits_guarantees.py).

The `server` fixture itself is in tests/conftest.py (it is built from `start_server` here).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
CLIENT_PROCESSES = 5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def start_server() -> Iterator[str]:
    """gunicorn -w 4 on the test database; yields its base URL (needs committed data: transactional_db)."""
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


def send(call: tuple) -> tuple[int, dict]:
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
        return list(pool.map(send, calls))


def in_sequence(calls: list[tuple]) -> list[tuple[int, dict]]:
    return [send(call) for call in calls]


def at_once(calls: list[tuple], processes: int = CLIENT_PROCESSES) -> list[tuple[int, dict]]:
    """Send every call at the same time from `processes` client processes (threads within each)."""
    chunks = [calls[i::processes] for i in range(processes)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        return [answer for chunk in pool.map(_burst, chunks) for answer in chunk]


def statuses(answers: list[tuple[int, dict]]) -> Counter:
    return Counter(status for status, _ in answers)
