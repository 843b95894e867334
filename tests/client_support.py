"""Helpers for the client tests that import no Django: a scripted HTTP proxy, and worker processes.

The proxy stands between the client and the live server and misbehaves on cue: it answers
503 (optionally with Retry-After), or forwards a request and then drops the connection
without answering (the answer is lost, the server did the work), or just forwards.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

FORWARD = "forward"
FAIL_503 = "503"
FAIL_429 = "429"
DROP_AFTER_FORWARD = "drop-after-forward"  # the server records, the client never hears


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None
    action: str


@dataclass
class FlakyProxy:
    upstream: str
    retry_after: str | None = None
    script: deque[str] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    action = proxy.script.popleft() if proxy.script else FORWARD
                    proxy.seen.append(Seen(self.command, self.path, self.headers.get("Idempotency-Key"), action))
                if action in (FAIL_503, FAIL_429):
                    payload = b'{"error": {"type": "unavailable", "message": "try again"}}'
                    self.send_response(int(action))
                    if proxy.retry_after is not None:
                        self.send_header("Retry-After", proxy.retry_after)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                upstream = httpx.request(self.command, proxy.upstream + self.path, headers=headers, content=body,
                                         timeout=30)
                if action == DROP_AFTER_FORWARD:
                    self.close_connection = True
                    return
                self.send_response(upstream.status_code)
                for name, value in upstream.headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def record_calls(base_url: str, api_key: str, users: list[str], calls: int, start: Any, done: Any) -> None:
    """A worker process: `calls` update_cost calls through budget_client.BudgetManager, users in turn.

    `start` is a multiprocessing Event (both processes begin together), `done` a Queue for the count.
    """
    from budget_client import BudgetManager

    completion = {"model": "gpt-4o-mini", "usage": {"prompt_tokens": 1234, "completion_tokens": 567}}
    start.wait(60)
    recorded = 0
    with BudgetManager("acme", base_url, api_key) as manager:
        for index in range(calls):
            manager.update_cost(user=users[index % len(users)], completion_obj=completion)
            recorded += 1
    done.put(recorded)
