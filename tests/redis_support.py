"""Redis for the tests: the shared one on 127.0.0.1 when it answers, or a private redis-server to break.

The shared Redis is never stopped: a test that needs Redis down starts a PrivateRedis of its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

REDIS_SERVER = shutil.which("redis-server")
# REDIS_URL as given to the whole run, before budgetsite/settings_test.py added a pytest-xdist worker's index.
BASE_REDIS_URL = "TEST_BASE_REDIS_URL"


def worker_index() -> int:
    """N in pytest-xdist's worker gwN; 0 outside xdist."""
    return int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def worker_count() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)


def redis_db_of(url: str) -> int:
    return int(urlsplit(url).path.strip("/") or 0)


def with_redis_db(url: str, number: int) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{number}"))

# With no REDIS_URL the Redis tests use 127.0.0.1's Redis when it answers, in a database of their own
# (15, and 14, 13, ... for the other pytest-xdist workers).
LOCAL_REDIS_URL = f"redis://127.0.0.1:6379/{15 - worker_index()}"


def free_port() -> int:
    """A loopback port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_command(port: int, *args: str, host: str = "127.0.0.1", timeout: float = 5) -> Any:
    """One RESP command on a fresh connection (no client library): a simple or integer reply."""
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(payload.encode())
        reply = sock.recv(65536).decode()
    kind, rest = reply[0], reply[1:].split("\r\n", 1)[0]
    if kind == ":":
        return int(rest)
    if kind == "-":
        raise RuntimeError(rest)
    return rest


def local_redis_answers() -> bool:
    try:
        return redis_command(6379, "PING", timeout=1) == "PONG"
    except (OSError, RuntimeError, IndexError):
        return False


def redis_url_or_skip() -> str:
    """REDIS_URL if set, else 127.0.0.1's Redis if it answers; skips the test when there is neither."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    if local_redis_answers():
        return LOCAL_REDIS_URL
    pytest.skip("needs Redis: none answers on 127.0.0.1:6379 and REDIS_URL is not set")


def spare_redis_url() -> str:
    """A Redis database no other test of this run uses, for a test that empties it first (or skips).

    The run's REDIS_URL number plus the number of workers plus this worker's index: with
    REDIS_URL=.../6 and `-n 2` the workers use 6 and 7 and their spares are 8 and 9; run alone, 7.
    """
    url = os.environ.get(BASE_REDIS_URL) or redis_url_or_skip()
    if not os.environ.get(BASE_REDIS_URL) and not os.environ.get("REDIS_URL"):
        return with_redis_db(url, redis_db_of(url) - worker_count())  # below the workers' 15, 14, ...
    return with_redis_db(url, redis_db_of(url) + worker_count() + worker_index())


def need_redis_server() -> None:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server program (a private Redis is started and stopped)")


class PrivateRedis:
    """A redis-server of the test's own on a free loopback port: stop, pause (SIGSTOP), kill, start again."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a paused server cannot act on SIGTERM
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process dies on SIGKILL too, but be plain
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def command(self, *args: str) -> Any:
        return redis_command(self.port, *args)
