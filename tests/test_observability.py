"""Operators' view: request ids, JSON log lines with no secrets in them, Prometheus metrics."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from budgets.observability import JsonFormatter, RedactSecrets, RequestIdFilter, redact
from tests.api_helpers import new_key

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api(make_api, client):
    return make_api(client=client)


@pytest.mark.django_db
def test_every_answer_carries_a_request_id_and_a_sane_one_given_is_kept(client):
    fresh = client.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", fresh["X-Request-ID"])
    assert client.get("/healthz", HTTP_X_REQUEST_ID="trace-42")["X-Request-ID"] == "trace-42"
    forged = client.get("/healthz", HTTP_X_REQUEST_ID="bad id\nX-Evil: 1")["X-Request-ID"]
    assert forged != "bad id\nX-Evil: 1" and re.fullmatch(r"[0-9a-f]{32}", forged)


def test_json_log_lines_carry_the_request_id_and_mask_keys():
    record = logging.LogRecord("budgets", logging.WARNING, __file__, 1,
                               "key %s failed; header Bearer %s", ("bm_abcdefghijklmnop1234", "sk-live-xyz"), None)
    RequestIdFilter().filter(record)
    RedactSecrets().filter(record)
    line = json.loads(JsonFormatter().format(record))

    assert line["level"] == "WARNING" and line["request_id"] == "-"
    assert "bm_abcdefghijklmnop1234" not in line["message"] and "sk-live-xyz" not in line["message"]
    assert line["message"] == "key bm_[redacted] failed; header Bearer [redacted]"
    assert redact('{"webhook_secret": "s3cr3t"}') == '{"webhook_secret": "[redacted]"}'


def test_no_api_key_reaches_the_logs_of_a_failed_request(client, project, caplog):
    raw = new_key(project)
    caplog.set_level(logging.DEBUG)
    response = client.get("/api/v1/users/nobody", HTTP_AUTHORIZATION=f"Bearer {raw}x")

    assert response.status_code == 401
    handler_output = "\n".join(JsonFormatter().format(r) for r in caplog.records if RedactSecrets().filter(r))
    assert raw not in handler_output and raw not in caplog.text


def test_metrics_are_off_without_a_token(client, settings):
    settings.METRICS_TOKEN = ""
    assert client.get("/metrics").status_code == 404


def test_metrics_need_the_token_and_count_requests_by_route_not_by_user(api, client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    api.put("/api/v1/users/secret-user-7/budget", {"total_budget": 5})
    api.get("/api/v1/users/secret-user-7")

    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    page = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert page.status_code == 200
    text = page.content.decode()
    assert re.search(r'budget_http_requests_total\{method="GET",route="api/v1/users/<path:user>",status="200"\} '
                     r"[1-9]", text)
    assert "secret-user-7" not in text
    assert "budget_alerts_undelivered 0.0" in text
    assert "budget_budgets_overdue 0.0" in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    """Multiprocess mode: 2 workers answer 40 requests; one scrape counts all 40."""
    port = _free_port()
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc), "METRICS_TOKEN": "t", "VAR_DIR": str(tmp_path),
           "DJANGO_SETTINGS_MODULE": "budgetsite.settings_test", "GUNICORN_BIND": f"127.0.0.1:{port}",
           "WEB_CONCURRENCY": "2"}
    env.pop("DATABASE_URL", None)  # a fresh SQLite file
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "budgetsite/gunicorn.conf.py", "budgetsite.wsgi:application"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    scrape = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer t"})

    def healthz_count() -> float:
        text = urllib.request.urlopen(scrape, timeout=30).read().decode()
        counts = re.findall(r'budget_http_requests_total\{method="GET",route="healthz",status="200"\} ([0-9.]+)', text)
        return sum(float(count) for count in counts)

    try:
        for _ in range(450):  # a loaded machine may take a while to start two workers
            assert server.poll() is None, server.stderr.read().decode()[-3000:] if server.stderr else ""
            try:
                before = healthz_count()
                break
            except OSError:
                time.sleep(0.2)
        for _ in range(40):
            urllib.request.urlopen(base + "/healthz", timeout=30)
        after = healthz_count()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert after - before == 40
    assert len({p.name.split("_")[-1] for p in multiproc.glob("counter_*.db")}) >= 1


def test_metrics_count_recorded_costs_and_refusals(api, client, project, settings):
    settings.METRICS_TOKEN = "scrape-me"
    project.max_budget = Decimal("0.001")
    project.save()  # a test shortcut: the cap is only read
    api.put("/api/v1/users/m-user/budget", {"total_budget": 5})
    name = re.escape(project.name)
    series = {
        "events": rf'budget_cost_recorded_events_total\{{model="metric-model",project="{name}"\}} ([0-9.e+-]+)',
        "dollars": rf'budget_cost_recorded_dollars_total\{{model="metric-model",project="{name}"\}} ([0-9.e+-]+)',
        "refused": rf'budget_exceeded_total\{{project="{name}",scope="project"\}} ([0-9.e+-]+)',
    }

    def scrape() -> dict[str, float]:
        text = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me").content.decode()
        return {k: float(m.group(1)) if (m := re.search(p, text)) else 0.0 for k, p in series.items()}

    before = scrape()  # counters are per process: other tests may have counted this project too
    assert api.post("/api/v1/users/m-user/costs", {"model": "metric-model", "cost": 0.002}).status_code == 201
    assert api.post("/api/v1/users/m-user/costs?enforce=true", {"model": "metric-model", "cost": 0.002}
                    ).status_code == 402
    after = scrape()

    assert after["events"] - before["events"] == 1
    assert abs(after["dollars"] - before["dollars"] - 0.002) < 1e-12
    assert after["refused"] - before["refused"] == 1
