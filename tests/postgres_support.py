"""Whether a PostgreSQL answers where the tests marked postgres could run.

`make test` runs the suite on SQLite when DATABASE_URL is unset, which skips the tests marked
postgres; it then runs those again on 127.0.0.1's PostgreSQL if this says it answers:

    python -m tests.postgres_support postgres://postgres@127.0.0.1:5432/budget_local

exits 0 when a connection to that server's `postgres` database (where pytest-django creates
and drops the test database) succeeds, 1 otherwise. Only Python and psycopg are needed.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit, urlunsplit


def answers(url: str, timeout: int = 2) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    maintenance = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    try:
        psycopg.connect(maintenance, connect_timeout=timeout).close()
    except psycopg.Error:
        return False
    return True


if __name__ == "__main__":
    sys.exit(0 if answers(sys.argv[1]) else 1)
