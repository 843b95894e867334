"""CSV export of the ledger, streamed: a million rows never sit in memory."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.timezone import now as utcnow

from ..forms import RangeForm
from ..selectors import console as selectors
from .common import get_project_for_user


class _Echo:
    """A file-like object whose write() returns the line, for csv.writer in a generator."""

    def write(self, value: str) -> str:
        return value


LINES_PER_CHUNK = 2000  # one write to the socket per chunk, not per row


def _lines(header: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    chunk = [writer.writerow(header)]
    for row in rows:
        chunk.append(writer.writerow(row))
        if len(chunk) >= LINES_PER_CHUNK:
            yield "".join(chunk)
            chunk = []
    yield "".join(chunk)


@login_required
def export_csv(request: HttpRequest, project_id: int) -> StreamingHttpResponse:
    """The ledger filtered like the pages: ?user=, ?model=, ?tag=, and a range (days, or start/end)."""
    project = get_project_for_user(request, project_id)
    params = request.GET
    has_range = any(params.get(k) for k in ("days", "start", "end"))
    rng = RangeForm(params, zone=selectors.project_zone(project)).date_range() if has_range else None
    user_id = params.get("user") or None
    model = params.get("model") or None
    tag = params.get("tag") or None
    if connection.vendor == "postgresql":
        content: Iterator[Any] = selectors.export_csv_chunks(project, rng=rng, user_id=user_id, model=model,
                                                              tag=tag)
    else:
        content = _lines(selectors.EXPORT_COLUMNS,
                         selectors.export_rows(project, rng=rng, user_id=user_id, model=model, tag=tag))
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    stamp = utcnow().astimezone(selectors.project_zone(project)).strftime("%Y%m%d-%H%M")
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in project.name)[:60] or "project"
    response["Content-Disposition"] = f'attachment; filename="{name}-ledger-{stamp}.csv"'
    return response
