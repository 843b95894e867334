"""Traces: off and free unless OTEL_* asks; when on, one trace from a request to its SQL, and on to a Celery task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from budgets.models import Alert, Project
from budgetsite import tracing
from tests.celery_support import WebhookReceiver, celery_app, embedded_broker, running_worker

ROOT = Path(__file__).resolve().parent.parent


# --- the switch ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "exporters"), [
    ({}, []),
    ({"OTEL_SERVICE_NAME": "budgets"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, Console,otlp"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
])
def test_the_otel_variables_decide_whether_tracing_is_on(environ, exporters):
    assert tracing.wanted_exporters(environ) == exporters


def test_an_exporter_this_service_lacks_is_a_configuration_error():
    with pytest.raises(tracing.TracingMisconfigured, match="zipkin"):
        tracing.wanted_exporters({"OTEL_TRACES_EXPORTER": "otlp,zipkin"})


def python(code: str, *, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with the production settings module, no OTEL_* but `env`'s."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("OTEL_") and k not in ("DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE")}
    clean.update({"VAR_DIR": str(tmp_path / "var"), "SECRET_KEY": "x" * 50, "ALLOWED_HOSTS": "*", **env})
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=120)


# What a process looks like after the web and a worker started: is anything of OpenTelemetry there?
INSPECT = """
import json, sqlite3, sys
import psycopg
import budgetsite.wsgi
from celery import signals
from django.conf import settings
signals.worker_init.send(sender=None)
signals.beat_init.send(sender=None)
print(json.dumps({
    "modules": sorted(name for name in sys.modules if name.startswith("opentelemetry")),
    "middleware": [name for name in settings.MIDDLEWARE if "opentelemetry" in name],
    "wrapped": [name for name, f in (("psycopg", psycopg.connect), ("sqlite3", sqlite3.connect))
                if hasattr(f, "__wrapped__")],
}))
"""


@pytest.mark.slow
def test_with_no_otel_variable_nothing_of_opentelemetry_is_even_imported(tmp_path):
    result = python(INSPECT, env={}, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"modules": [], "middleware": [], "wrapped": []}


@pytest.mark.slow
def test_otel_sdk_disabled_keeps_it_off_whatever_else_is_set(tmp_path):
    result = python(INSPECT, env={"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console",
                                  "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"modules": [], "middleware": [], "wrapped": []}


@pytest.mark.slow
def test_an_otlp_endpoint_switches_it_on_and_the_collector_receives_the_request_span(tmp_path):
    # A request through the real WSGI application; the spans leave by OTLP/HTTP (protobuf) for the
    # receiver standing in for a collector, named after OTEL_SERVICE_NAME.
    code = INSPECT + """
from django.test import Client
from opentelemetry import trace
print(Client().get("/healthz").status_code)
trace.get_tracer_provider().force_flush()
"""
    with WebhookReceiver() as collector:
        endpoint = collector.url.removesuffix("/hook")
        result = python(code, env={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "budgets-test"},
                        tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout.splitlines()[-2])
    assert state["middleware"] == ["opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"]
    assert state["wrapped"] == ["psycopg", "sqlite3"]
    assert result.stdout.splitlines()[-1] in ("200", "503")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    assert {request.path for request in collector.received} == {"/v1/traces"}
    headers = {name.lower(): value for name, value in collector.received[0].headers.items()}
    assert headers["content-type"] == "application/x-protobuf"
    exported = ExportTraceServiceRequest()
    for request in collector.received:
        exported.MergeFromString(request.body)
    services = {attribute.value.string_value for resource in exported.resource_spans
                for attribute in resource.resource.attributes if attribute.key == "service.name"}
    names = {span.name for resource in exported.resource_spans for scope in resource.scope_spans
             for span in scope.spans}
    assert services == {"budgets-test"}
    assert "GET healthz" in names


# --- in this process, with an in-memory exporter -----------------------------------------------


@pytest.fixture
def spans(transactional_db) -> Iterator[Any]:
    """Tracing on for this test with an in-memory exporter; the database reconnects through the wrapped driver."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrumented = tracing.instrument(provider)
    connection.close()
    try:
        yield exporter
    finally:
        instrumented.uninstrument()
        connection.close()  # later tests get an unwrapped connection
        provider.shutdown()


def ancestry(span: Any, by_id: dict[int, Any]) -> list[str]:
    """The names from `span` up to its trace's root, through the parents that were recorded."""
    names = [span.name]
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        names.append(span.name)
    return names


def db_system(span: Any) -> str | None:
    return span.attributes.get("db.system") or span.attributes.get("db.system.name")


def db_text(span: Any) -> str:
    return str(span.attributes.get("db.statement") or span.attributes.get("db.query.text") or "")


def test_one_trace_spans_a_cost_record_from_the_request_to_its_sql(spans, make_budget, api):
    from opentelemetry.trace import SpanKind

    make_budget("alice", total_budget="10")
    spans.clear()

    response = api.post("/api/v1/users/alice/costs", {"model": "gpt-4o-mini", "cost": 1})

    assert response.status_code == 201
    finished = spans.get_finished_spans()
    (request,) = [span for span in finished if span.kind == SpanKind.SERVER]
    assert request.name == "POST api/v1/users/<path:user>/costs"
    assert request.attributes["http.response.status_code" if "http.response.status_code" in request.attributes
                              else "http.status_code"] == 201
    queries = [span for span in finished if db_system(span) in ("postgresql", "sqlite")]
    assert queries, [span.name for span in finished]
    assert {span.context.trace_id for span in queries} == {request.context.trace_id}
    by_id = {span.context.span_id: span for span in finished}
    assert all(ancestry(span, by_id)[-1] == request.name for span in queries)
    assert any("INSERT INTO" in db_text(span) and "budgets_costevent" in db_text(span) for span in queries)


@pytest.mark.celery_worker
def test_an_alert_delivery_task_joins_the_trace_of_the_request_that_raised_it(spans, tmp_path, project,
                                                                              make_budget, api):
    from opentelemetry.trace import SpanKind

    make_budget("alice", total_budget="10")
    with WebhookReceiver() as receiver, celery_app(**embedded_broker(tmp_path / "broker")) as app, \
            running_worker(app) as worker:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)
        spans.clear()
        response = api.post("/api/v1/users/alice/costs", {"model": "gpt-4o-mini", "cost": 9})
        worker.wait_for("budgets.deliver_alert")

    assert response.status_code == 201
    assert len(receiver.received) == 1
    assert Alert.objects.get().delivered_at is not None
    finished = spans.get_finished_spans()
    (request,) = [span for span in finished if span.kind == SpanKind.SERVER]
    (publish,) = [span for span in finished if span.name == "apply_async/budgets.deliver_alert"]
    (run,) = [span for span in finished if span.name == "run/budgets.deliver_alert"]
    assert (publish.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert publish.context.trace_id == run.context.trace_id == request.context.trace_id
    by_id = {span.context.span_id: span for span in finished}
    assert ancestry(run, by_id) == [run.name, publish.name, request.name]
    # The task's own SQL (the claim, the delivered mark) sits under the task's span.
    task_queries = [span for span in finished if db_system(span) and span.parent is not None
                    and span.parent.span_id == run.context.span_id]
    assert any("UPDATE" in db_text(span) and "budgets_alert" in db_text(span) for span in task_queries)
