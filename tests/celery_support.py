"""Helpers for the background-work tests: a Celery app per test, an in-thread worker, a webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from celery import Celery, signals
from celery.contrib.testing.worker import start_worker

import budgets.tasks  # noqa: F401 (registers the shared tasks on every app)


def embedded_broker(folder: Path) -> dict[str, Any]:
    """Celery settings for an embedded broker (kombu's SQLAlchemy transport, SQLite) under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": f"sqla+sqlite:///{folder / 'broker.sqlite3'}",
        "broker_transport": None,
        "broker_transport_options": {"connect_args": {"timeout": 30}},
    }


def redis_broker(url: str) -> dict[str, Any]:
    from django.conf import settings

    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS if settings.CELERY_BROKER_URL.startswith("redis") else {
        "visibility_timeout": 3600, "socket_connect_timeout": 3, "socket_timeout": 5, "max_retries": 1}
    return {"broker_url": url, "broker_transport": None, "broker_transport_options": dict(options)}


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def celery_app(**overrides: Any) -> Iterator[Celery]:
    """A fresh Celery app configured like the real one (Django settings) with `overrides`.

    It is the current and default app while the block runs, so the shared tasks
    (`budgets.tasks.*.delay()`) publish through it; the real app is restored after.
    """
    from budgetsite.celery import app as main_app

    app = Celery("budgets-test", set_as_current=False)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    # A queue of its own: nothing left over from another run (or another suite on this Redis) interferes.
    app.conf.update(worker_hijack_root_logger=False, task_default_queue=f"test-{uuid.uuid4().hex}", **overrides)
    app.finalize()
    app.set_current()
    app.set_default()
    try:
        yield app
    finally:
        app.close()
        main_app.set_current()
        main_app.set_default()


@dataclass
class TaskLog:
    """Tasks the worker finished: (task name, state, return value)."""

    done: list[tuple[str, str, Any]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, name: str, *, count: int = 1, state: str = "SUCCESS", timeout: float = 60) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = [value for task, st, value in self.done if task == name and st == state]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the worker did not finish {count} {name} ({state}); it did {self.done}")
                self.changed.wait(left)


@contextmanager
def running_worker(app: Celery) -> Iterator[TaskLog]:
    """A real Celery worker (solo pool) in a thread of this process, consuming from `app`'s broker.

    Tests using it need `django_db(transaction=True)`: the worker has its own database connection.
    """
    log = TaskLog()

    def on_postrun(sender: Any = None, state: str | None = None, retval: Any = None, **kwargs: Any) -> None:
        with log.changed:
            log.done.append((sender.name, state or "", retval))
            log.changed.notify_all()

    signals.task_postrun.connect(on_postrun, weak=False)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING", shutdown_timeout=30):
            yield log
    finally:
        signals.task_postrun.disconnect(on_postrun)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """A tiny HTTP server on 127.0.0.1 that records POSTs and answers with the statuses it is given."""

    def __init__(self, statuses: list[int] | None = None, *, delay: float = 0.0,
                 on_request: Callable[[Received], None] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.on_request = on_request
        self.received: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Received(self.path, dict(self.headers.items()), body)
                with receiver.lock:
                    receiver.received.append(request)
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                if receiver.on_request:
                    receiver.on_request(request)
                if receiver.delay:
                    time.sleep(receiver.delay)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
