"""Wrappers of the hot path's cursor class (services.ledger.prepared_cursor), as a database driver's
instrumentation wraps a connection's cursor factory: budgetsite.tracing adds OpenTelemetry's here when
tracing is on, so the prepared statements are traced like every other. Imports nothing (tracing is set
up before Django is)."""

from __future__ import annotations

from typing import Any

PREPARED_CURSOR_WRAPPERS: list[Any] = []
