"""WSGI entry point (gunicorn budgetsite.wsgi)."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

from budgets.base.validation import url_path_is_utf8
from budgetsite.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "budgetsite.settings")
setup_tracing()  # before Django builds its middleware chain; nothing at all unless OTEL_* asks for it

HOSTED_PATHS = ("/get_budget", "/set_budget")


class ServerInput:
    """What Django does not check in what the server hands over: the path's bytes, a chunked body.

    A path whose percent-escapes are not UTF-8 (`/users/%FF`) is a 400: Django would turn the
    bytes back into the text "%FF" and serve another id (it keeps no copy of the raw path, so
    this is checked before it).

    A chunked body (Transfer-Encoding: chunked, no Content-Length) would read as empty: Django
    reads CONTENT_LENGTH bytes. gunicorn de-chunks such a body and marks the stream as ending
    with it (`wsgi.input_terminated`): it is read here, up to the limit the request would have
    with a Content-Length (413 past it), and handed on with its length. A chunked body on a
    server that does not mark the stream cannot be delimited: 411 Length Required.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not url_path_is_utf8(environ.get("PATH_INFO", "")):
            return _answer(start_response, 400, "the URL path (a user id, say) is not percent-encoded UTF-8: "
                                                "an escape such as %FF is no character")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked or environ.get("CONTENT_LENGTH"):
            return self.app(environ, start_response)
        if not environ.get("wsgi.input_terminated"):
            return _answer(start_response, 411, "a chunked body needs a server that ends it; send Content-Length")
        limit = _limit(environ.get("PATH_INFO", ""))
        body = environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            return _answer(start_response, 413, f"the request body is larger than {limit} bytes")
        environ = {**environ, "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
        return self.app(environ, start_response)


def _limit(path: str) -> int:
    from django.conf import settings

    if path in HOSTED_PATHS:
        return int(settings.HOSTED_MAX_BODY_BYTES)
    # A JSON body beyond DATA_UPLOAD_MAX_MEMORY_SIZE is refused by Django itself (413); a console
    # upload (the CSV import) may use the files' limit.
    return max(settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0, settings.FILE_UPLOAD_MAX_MEMORY_SIZE)


def _answer(start_response: Callable[..., Any], status: int, message: str) -> list[bytes]:
    reason = {400: "Bad Request", 411: "Length Required", 413: "Content Too Large"}[status]
    kind = {400: "validation_error", 411: "length_required", 413: "payload_too_large"}[status]
    body = json.dumps({"error": {"type": kind, "message": message}}).encode()
    start_response(f"{status} {reason}", [("Content-Type", "application/json; charset=utf-8"),
                                          ("Content-Length", str(len(body)))])
    return [body]


application = ServerInput(get_wsgi_application())
