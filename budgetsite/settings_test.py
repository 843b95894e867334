"""Settings for the test suite: the real settings with test-only defaults."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("SECRET_KEY", "test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz")
os.environ.setdefault("ALLOWED_HOSTS", "*")
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("SESSION_COOKIE_SECURE", "false")
os.environ.setdefault("CSRF_COOKIE_SECURE", "false")

# pytest-xdist (`make test` runs the suite in 2 processes, gw0 and gw1): pytest-django gives each
# its own test database; this gives each its own Redis database (REDIS_URL's number plus the
# worker's index) and VAR_DIR (the SQLite broker of a run without Redis). Set in os.environ, so
# the servers and workers a test starts inherit them; TEST_BASE_REDIS_URL keeps the run's own
# REDIS_URL (tests/redis_support.spare_redis_url) and says it is done.
if os.environ.get("PYTEST_XDIST_WORKER") and "TEST_BASE_REDIS_URL" not in os.environ:
    _worker = os.environ["PYTEST_XDIST_WORKER"]
    _redis_url = os.environ.get("REDIS_URL", "")
    os.environ["TEST_BASE_REDIS_URL"] = _redis_url
    if _redis_url:
        _parts = urlsplit(_redis_url)
        _number = int(_parts.path.strip("/") or 0) + int(_worker.removeprefix("gw"))
        os.environ["REDIS_URL"] = urlunsplit(_parts._replace(path=f"/{_number}"))
    if "VAR_DIR" not in os.environ:
        os.environ["VAR_DIR"] = str(Path(__file__).resolve().parent.parent / "var" / f"xdist-{_worker}")

from .settings import *  # noqa: E402,F403
from .settings import DATABASES, VAR_DIR  # noqa: E402  (named: changed below)

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"

# Tests serve static files through the finders; no collectstatic output is needed.
WHITENOISE_AUTOREFRESH = True
WHITENOISE_USE_FINDERS = True

# The alert tests post to a receiver on 127.0.0.1; tests of the refusal turn this off.
ALERT_WEBHOOK_ALLOW_PRIVATE = True
SLACK_WEBHOOK_HTTPS_ONLY = False
# Alert messages link here, whichever database the suite runs on (production leaves it unset).
SITE_URL = "http://testserver"

# The suite sends many wrong keys on purpose; the rate-limit tests lower this (and use their own address).
API_AUTH_FAILURE_LIMIT = 10_000

# On SQLite the test database is a file, not pytest-django's shared-cache in-memory database:
# tests whose threads write at once (live servers, workers, LiteLLM's logging threads) then wait
# on SQLite's busy timeout instead of failing with "database table is locked".
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
