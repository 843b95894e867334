"""Traces (OpenTelemetry): requests, database calls and Celery tasks, switched on by the OTEL_* variables.

Off by default, and then free: nothing of OpenTelemetry is imported and nothing is wrapped (the
check reads a few environment variables). Tracing is on when

- `OTEL_TRACES_EXPORTER` names exporters (`otlp`, `console`, comma-separated; `none`: off), or
- an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`;
  the exporter is then `otlp`),

unless `OTEL_SDK_DISABLED=true`. The other standard variables are read by the SDK itself:
`OTEL_SERVICE_NAME` (default `budget-manager`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*`, `OTEL_PYTHON_DJANGO_EXCLUDED_URLS`. The OTLP exporter
speaks http/protobuf (`OTEL_EXPORTER_OTLP_PROTOCOL=grpc` needs opentelemetry-exporter-otlp-proto-grpc
installed beside it).

The entry points call `setup_tracing()` before anything runs: budgetsite/wsgi.py and asgi.py (the
web), manage.py (commands, runserver) and budgetsite/celery.py (worker and beat, on their init
signals). A bad value fails loudly at start, like the settings.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SERVICE_NAME = "budget-manager"
EXPORTERS = ("otlp", "console")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_TRUE = ("1", "true", "yes", "on")

_lock = threading.Lock()
_active: Instrumented | None = None


class TracingMisconfigured(ValueError):
    """An OTEL_* variable this service cannot honour (an unknown exporter, a missing package)."""


def wanted_exporters(environ: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the environment asks for; [] when tracing is off (the default)."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() in _TRUE:
        return []
    named = [name.strip().lower() for name in env.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if not named:
        return ["otlp"] if any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES) else []
    if "none" in named:
        return []
    unknown = [name for name in named if name not in EXPORTERS]
    if unknown:
        raise TracingMisconfigured(f"OTEL_TRACES_EXPORTER names {', '.join(unknown)}: this service exports "
                                   f"with {' or '.join(EXPORTERS)} (or none)")
    return list(dict.fromkeys(named))


@dataclass
class Instrumented:
    """What `instrument` switched on, so that a test can switch it off again."""

    instrumentors: list[Any]

    wrappers: list[Any] = field(default_factory=list)

    def uninstrument(self) -> None:
        from budgets.base.cursors import PREPARED_CURSOR_WRAPPERS

        for wrapper in self.wrappers:
            PREPARED_CURSOR_WRAPPERS.remove(wrapper)
        for instrumentor in reversed(self.instrumentors):
            instrumentor.uninstrument()


def instrument(tracer_provider: Any) -> Instrumented:
    """Trace Django requests, psycopg and sqlite3 calls and Celery tasks (publish and run) with the provider.

    The database drivers are wrapped where they connect: connections opened before this are not traced.
    """
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor, _new_cursor_factory
    from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor

    from budgets.base.cursors import PREPARED_CURSOR_WRAPPERS

    done, wrappers = [], []
    for instrumentor in (DjangoInstrumentor(), PsycopgInstrumentor(), SQLite3Instrumentor(), CeleryInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=tracer_provider)
            done.append(instrumentor)
            if isinstance(instrumentor, PsycopgInstrumentor):
                # The hot path's prepared statements run on a cursor class of their own (services.ledger):
                # traced the way the instrumentation traces the connection's cursor factory.
                def traced(base: type) -> type:
                    return _new_cursor_factory(base_factory=base, tracer_provider=tracer_provider)

                PREPARED_CURSOR_WRAPPERS.append(traced)
                wrappers.append(traced)
    return Instrumented(done, wrappers)


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError:
            raise TracingMisconfigured("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc; "
                                       "or use http/protobuf (port 4318)") from None
        return GrpcExporter()
    if protocol != "http/protobuf":
        raise TracingMisconfigured(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported: use http/protobuf")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout and compression from OTEL_EXPORTER_OTLP_*


def tracer_provider_for(exporters: list[str], environ: Mapping[str, str]) -> Any:
    """A TracerProvider with the service's resource and a batch processor per exporter."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the name given here only fills a gap.
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": SERVICE_NAME}))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, environ)))
    return provider


def setup_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Switch tracing on for this process if the OTEL_* variables ask for it; True when it is on.

    Called more than once (the web imports the Celery app too) it does the work once.
    """
    global _active
    env = os.environ if environ is None else environ
    exporters = wanted_exporters(env)
    if not exporters:
        return False
    with _lock:
        if _active is not None:
            return True
        from opentelemetry import trace

        provider = tracer_provider_for(exporters, env)
        trace.set_tracer_provider(provider)
        _active = instrument(provider)
    return True
