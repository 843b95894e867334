"""GET /healthz: 200 when the database answers, 503 otherwise; no authentication."""

from __future__ import annotations

import logging

from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse

from .errors import json_response

logger = logging.getLogger(__name__)


def healthz(request: HttpRequest) -> HttpResponse:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError:
        logger.exception("health check: the database does not answer")
        return json_response({"status": "error", "message": "the database does not answer"}, 503)
    return json_response({"status": "ok"})
