"""gunicorn settings read with `gunicorn -c budgetsite/gunicorn.conf.py budgetsite.wsgi:application`.

With PROMETHEUS_MULTIPROC_DIR set (an empty directory, created fresh at each start), every
worker writes its metrics there and /metrics adds them up; a worker that exits is marked dead.
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))


def child_exit(server: Any, worker: Any) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
