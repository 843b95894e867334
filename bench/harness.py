"""What every row shares: a gunicorn under test, wrk runs, timing, the result table and its JSON.

Every figure is a ratio to a baseline measured in the same run (the machine is shared and
noisy, so absolute numbers mean little alone); the absolute value is kept next to it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LUA = BENCH / "lua"


# --- results ------------------------------------------------------------------------------------


@dataclass
class Row:
    """One row's lines: (workload, value, unit, ratio, baseline name, target, met) plus notes."""

    key: str
    title: str
    lines: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, workload: str, value: float | str | None, unit: str, *, ratio: float | None = None,
            baseline: str = "", target: str = "", met: bool | None = None, **more: Any) -> None:
        self.lines.append({"workload": workload, "value": value, "unit": unit, "ratio": ratio,
                           "baseline": baseline, "target": target, "met": met, **more})

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def table(self) -> str:
        head = ("workload", "value", "ratio", "vs", "target", "met")
        body = [head]
        for line in self.lines:
            value = "-" if line["value"] is None else f"{fmt(line['value'])} {line['unit']}".strip()
            ratio = "-" if line["ratio"] is None else f"{line['ratio']:.2f}x"
            met = {True: "yes", False: "NO", None: "-"}[line["met"]]
            body.append((line["workload"], value, ratio, line["baseline"], line["target"], met))
        widths = [max(len(str(r[i])) for r in body) for i in range(len(head))]
        out = [f"Row {self.key}: {self.title}"]
        for n, r in enumerate(body):
            out.append("  " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
            if n == 0:
                out.append("  " + "-+-".join("-" * w for w in widths))
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def save(self, context: dict[str, Any]) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.key}.json"
        path.write_text(json.dumps({"row": self.key, "title": self.title, "lines": self.lines, "notes": self.notes,
                                    "extra": self.extra, "context": context}, indent=2, default=str) + "\n")
        return path


def fmt(value: float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def median_time(fn: Callable[[], object], rounds: int) -> tuple[float, list[float]]:
    """Median wall time of `rounds` calls, in seconds, and all the times."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


# --- the server under test ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: children of the arbiter."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(p) for p in children.read_text().split()]
        except OSError:
            return []

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                timeout: float = 120) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


def status_kib(pid: int, field_name: str) -> int | None:
    """A /proc/<pid>/status figure in KiB (VmRSS, VmHWM)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def gunicorn(env: dict[str, str], workers: int = 2, timeout: int = 300) -> Iterator[Server]:
    """`gunicorn budgetsite.wsgi:application -w 2` on a free port; always stopped on the way out.

    BENCH_GUNICORN_THREADS in `env` (bench/run.py --threads) above 1 runs gthread workers.
    """
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench-gunicorn-{port}.log"
    command = [sys.executable, "-m", "gunicorn", "budgetsite.wsgi:application", "-w", str(workers),
               "-b", f"127.0.0.1:{port}", "--timeout", str(timeout), "--error-logfile", str(log)]
    threads = int(env.get("BENCH_GUNICORN_THREADS", "1"))
    if threads > 1:
        command += ["--threads", str(threads)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = Server(port, process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {process.returncode}; see {log}")
            try:
                if server.request("GET", "/healthz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not answer /healthz within 60 s; see {log}")
            time.sleep(0.2)
        # Each worker imports lazily: warm both before measuring.
        for _ in range(8):
            server.request("GET", "/healthz")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- wrk ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: str

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "seconds": self.seconds, "rps": round(self.rps, 1),
                "p50_ms": round(self.p50_ms, 2), "p99_ms": round(self.p99_ms, 2), "non_2xx": self.non_2xx,
                "errors": self.errors}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]


def wrk(url: str, *, script: str | None = None, env: dict[str, str] | None = None, duration: int = 5,
        connections: int = 4, threads: int = 2) -> WrkResult:
    """One wrk run with latency percentiles; a Lua script from bench/lua/ sets method, body and headers."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed")
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s"]
    if script:
        command += ["-s", str(LUA / script)]
    command.append(url)
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False,
                         cwd=LUA)
    out = run.stdout
    if run.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed: {run.stderr or out}")
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    assert total is not None
    seconds = float(total.group(2)) * {"s": 1, "ms": 0.001, "m": 60}.get(total.group(3), 1)
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return WrkResult(
        requests=int(total.group(1)), seconds=seconds,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        p50_ms=_ms(percentiles["50"]), p99_ms=_ms(percentiles["99"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0, errors=errors.group(1) if errors else "",
    )
