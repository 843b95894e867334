"""Settings, all read from the environment.

With nothing set it runs on SQLite under ./var with an embedded Celery broker
(embedded mode); production sets DATABASE_URL, REDIS_URL, SECRET_KEY and the
allowed hosts, and refuses to start without a real secret key.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    """Read a boolean; anything but the usual spellings is a configuration error."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)
DATABASE_URL = env_str("DATABASE_URL")
# Embedded mode: no DATABASE_URL means one machine on SQLite under ./var (make run, a laptop).
EMBEDDED = not DATABASE_URL
PRODUCTION = not DEBUG and not EMBEDDED

SECRET_KEY = env_str("SECRET_KEY")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Production (DATABASE_URL set, DEBUG off) refuses to start "
            "without one: set SECRET_KEY to 50 random characters."
        )
    # Embedded mode keeps a random key of its own so sessions survive restarts.
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    SECRET_KEY = key_file.read_text().strip()
elif PRODUCTION and (len(SECRET_KEY) < 32 or SECRET_KEY.startswith("django-insecure")):
    raise ImproperlyConfigured("SECRET_KEY is too weak for production: use 50 random characters.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "" if PRODUCTION else "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "crispy_forms",
    "crispy_bootstrap5",
    # django-bootstrap-static: Bootstrap's dist files under static/bootstrap/ (no CDN).
    "bootstrap",
    "django_celery_beat",
    "axes",  # console and admin login lockout
    # Single sign-on (OpenID Connect): installed always, so the schema is the same whether or not
    # OIDC_ISSUER is set; its routes and the login page's button exist only when it is.
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.openid_connect",
    "ninja",  # Swagger UI's files, served locally (no CDN) at /api/v1/docs
    "budgets",
]

MIDDLEWARE = [
    "budgets.observability.RequestMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "budgets.api.errors.ApiErrorsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # After authentication: no-store depends on who is logged in (budgets/middleware.py).
    "budgets.middleware.SecurityHeadersMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Required by django-allauth (single sign-on): it only keeps its own login state tidy.
    "allauth.account.middleware.AccountMiddleware",
    # Last: turns a locked-out login into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# django-axes first: it refuses a locked-out username+address before the password is checked.
# (client.force_login in tests and sessions already logged in are not affected.)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("AXES_COOLOFF_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "budgets.views.auth.locked_out"

# --- Single sign-on: OpenID Connect through django-allauth (docs/operations.md "Single sign-on") ---
# Off unless OIDC_ISSUER is set. Every value is checked here: a bad one stops the start.
SSO_ROLES = ("owner", "manager", "viewer")  # budgets.models.Role's values (the apps are not loaded yet)


def parse_role_map(raw: str) -> list[tuple[str, str, str]]:
    """OIDC_ROLE_MAP: `group=project:role` entries separated by commas -> [(group, project, role)].

    A group may name several projects (one entry each); a project name may contain ":" (the role
    is after the last one). A group named twice for the same project keeps the highest role at login.
    """
    entries: list[tuple[str, str, str]] = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        group, equals, target = (text.strip() for text in item.partition("="))
        project, colon, role = (text.strip() for text in target.rpartition(":"))
        if not equals or not colon or not group or not project or role not in SSO_ROLES:
            raise ImproperlyConfigured(
                f"OIDC_ROLE_MAP entry {item!r} must read group=project:role with a role among "
                f"{', '.join(SSO_ROLES)} (e.g. OIDC_ROLE_MAP=\"budget-admins=acme:owner,analysts=acme:viewer\")")
        entries.append((group, project, role))
    return entries


def parse_issuer(raw: str, *, production: bool) -> str:
    """OIDC_ISSUER: the provider's issuer URL (its discovery document is at <issuer>/.well-known/...)."""
    issuer = raw.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", issuer):
        raise ImproperlyConfigured(f"OIDC_ISSUER must be the provider's issuer URL such as "
                                   f"https://login.example.com/realms/acme, got {raw!r}")
    loopback = re.match(r"http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?(/|$)", issuer)
    if production and issuer.startswith("http://") and not loopback:
        raise ImproperlyConfigured(f"OIDC_ISSUER must use https in production, got {raw!r}")
    return issuer


def parse_domains(items: list[str]) -> list[str]:
    """OIDC_ALLOWED_DOMAINS: email domains whose people may log in ("*": any address the provider vouches for)."""
    domains = [domain.lower().lstrip("@") for domain in items]
    if not domains:
        raise ImproperlyConfigured("OIDC_ALLOWED_DOMAINS is required with OIDC_ISSUER: the email domains "
                                   "allowed to log in, comma-separated (e.g. acme.com,acme.co.uk), or * for any")
    for domain in domains:
        if domain != "*" and not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+",
                                              domain):
            raise ImproperlyConfigured(f"OIDC_ALLOWED_DOMAINS: {domain!r} is not an email domain such as acme.com")
    return domains


OIDC_ISSUER = parse_issuer(env_str("OIDC_ISSUER"), production=PRODUCTION) if env_str("OIDC_ISSUER").strip() else ""
SSO_ENABLED = bool(OIDC_ISSUER)
OIDC_CLIENT_ID = env_str("OIDC_CLIENT_ID").strip()
OIDC_CLIENT_SECRET = env_str("OIDC_CLIENT_SECRET").strip()
OIDC_ALLOWED_DOMAINS = parse_domains(env_list("OIDC_ALLOWED_DOMAINS")) if SSO_ENABLED else []
# The claim (in the ID token or the userinfo answer) that lists a person's groups.
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups").strip()
OIDC_ROLE_MAP = parse_role_map(env_str("OIDC_ROLE_MAP"))
# The login page's button: "Log in with <OIDC_PROVIDER_NAME>".
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on").strip() or "single sign-on"
# Off: the login page offers single sign-on only and a password POST is refused (Django admin too).
PASSWORD_LOGIN = env_bool("PASSWORD_LOGIN", True)
if SSO_ENABLED:
    missing = [name for name, value in (("OIDC_CLIENT_ID", OIDC_CLIENT_ID), ("OIDC_CLIENT_SECRET", OIDC_CLIENT_SECRET))
               if not value]
    if missing:
        raise ImproperlyConfigured(f"{' and '.join(missing)} required with OIDC_ISSUER: the client registered "
                                   f"for this service at the provider")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", OIDC_GROUPS_CLAIM):
        raise ImproperlyConfigured(f"OIDC_GROUPS_CLAIM must be a claim name such as groups, got {OIDC_GROUPS_CLAIM!r}")
else:
    stray = [name for name in ("OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET", "OIDC_ALLOWED_DOMAINS", "OIDC_ROLE_MAP")
             if env_str(name).strip()]
    if stray:
        raise ImproperlyConfigured(f"{', '.join(stray)} set without OIDC_ISSUER: single sign-on needs the issuer URL")
    if not PASSWORD_LOGIN:
        raise ImproperlyConfigured("PASSWORD_LOGIN=false needs single sign-on (OIDC_ISSUER): nobody could log in")

# django-allauth: the provider comes from these settings (no database row); only what the console uses.
SSO_PROVIDER_ID = "sso"


def sso_providers(*, issuer: str, client_id: str, secret: str, name: str) -> dict[str, Any]:
    """SOCIALACCOUNT_PROVIDERS for one OpenID Connect provider (PKCE on; the ID token's issuer must be `issuer`)."""
    return {"openid_connect": {"APPS": [{
        "provider_id": SSO_PROVIDER_ID,
        "name": name,
        "client_id": client_id,
        "secret": secret,
        "settings": {"server_url": issuer, "oauth_pkce_enabled": True},
    }]}}


SOCIALACCOUNT_PROVIDERS = sso_providers(issuer=OIDC_ISSUER, client_id=OIDC_CLIENT_ID, secret=OIDC_CLIENT_SECRET,
                                        name=OIDC_PROVIDER_NAME) if SSO_ENABLED else {}
SOCIALACCOUNT_ADAPTER = "budgets.views.sso.SsoAdapter"
ACCOUNT_ADAPTER = "budgets.views.sso.AccountAdapter"
# First login creates the account with no form; an account with the same (verified) address is the same person.
SOCIALACCOUNT_AUTO_SIGNUP = True
SOCIALACCOUNT_EMAIL_REQUIRED = True
SOCIALACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_QUERY_EMAIL = True
SOCIALACCOUNT_STORE_TOKENS = False
ACCOUNT_EMAIL_VERIFICATION = "none"
SOCIALACCOUNT_REQUESTS_TIMEOUT = 10

ROOT_URLCONF = "budgetsite.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "budgetsite.wsgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 60),
        # A kept connection is tested (SELECT 1) before its first use in each request, so a restarted
        # database costs no request an error; off saves that round trip per request (docs/PERFORMANCE.md).
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", True),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # SQLite serves several processes (web, worker, beat) only with WAL and a busy timeout.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Files a browser asks for at the site's root (favicon.ico, for pages without a <link rel="icon">).
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    # plotly.min.js alone from the plotly package (its package_data holds much more).
    "budgets.staticfiles.PlotlyFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

CRISPY_ALLOWED_TEMPLATE_PACKS = "bootstrap5"
CRISPY_TEMPLATE_PACK = "bootstrap5"

# Request bodies over 1 MiB are refused (the API answers 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
# LiteLLM's hosted client sends its whole user_dict in every save (~170 bytes a user): its two
# endpoints read the body themselves, up to this (64 MiB: some 100,000 users and room to spare).
HOSTED_MAX_BODY_BYTES = env_int("HOSTED_MAX_BODY_BYTES", 64 * 1024 * 1024)

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    # Short timeouts: the cache only guards (the API's failed-key counter); a hung Redis must not hold requests.
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL,
                          "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1}}}
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: Redis in production; with no REDIS_URL, kombu's SQLAlchemy transport on an SQLite
# file under VAR_DIR needs no server process and still carries tasks between web, worker and
# beat (embedded mode, one machine).
BROKER_DB = VAR_DIR / "broker.sqlite3"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or REDIS_URL or f"sqla+sqlite:///{BROKER_DB}"
if CELERY_BROKER_URL.startswith(("sqla+", "sqlalchemy+")):
    # Passed to sqlalchemy.create_engine: wait for another process's write lock instead of
    # failing after SQLite's default 5 s.
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {"connect_args": {"timeout": 30}}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": 3600,
        # A broker that accepts connections but never answers must not hang a web request.
        "socket_connect_timeout": 3,
        "socket_timeout": 5,
        "max_retries": 1,
    }
# Publishing (a web request queueing a task) gives up fast when the broker is down: the
# database is the source of truth and the beat sweeps re-queue what was not sent.
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                    "interval_max": 0.2}
# A worker waits for the broker to come back however long it takes (default: give up after 100 tries).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_TIME_LIMIT = env_int("CELERY_TASK_TIME_LIMIT", 300)
CELERY_TASK_SOFT_TIME_LIMIT = env_int("CELERY_TASK_SOFT_TIME_LIMIT", 240)
CELERY_TASK_ACKS_LATE = True
# Our tasks are idempotent: one cut off by a lost broker connection is redelivered.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# How long a project invitation's link works (services/members.py).
INVITATION_MAX_AGE_DAYS = env_int("INVITATION_MAX_AGE_DAYS", 7)
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
# An SMTP server that does not answer must not hold an alert delivery for long.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 10)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "budget-manager@localhost")

# Failed API authentications (a wrong key) per client address per minute before 429.
API_AUTH_FAILURE_LIMIT = env_int("API_AUTH_FAILURE_LIMIT", 20)
# The client address the failed-key limit counts: REMOTE_ADDR, unless the load balancer's header
# is named here (e.g. X-Forwarded-For) with the number of proxies in front of gunicorn that append
# to it; the entry the outermost of them wrote is the client. Unset: the header is ignored (a client
# could write anything in it).
TRUSTED_PROXY_HEADER = env_str("TRUSTED_PROXY_HEADER").strip()
if TRUSTED_PROXY_HEADER and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", TRUSTED_PROXY_HEADER):
    raise ImproperlyConfigured(f"TRUSTED_PROXY_HEADER must be an HTTP header name such as X-Forwarded-For, "
                               f"got {TRUSTED_PROXY_HEADER!r}")
TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 1)
if TRUSTED_PROXY_COUNT < 1:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be at least 1 (the proxies in front of the web "
                               f"processes), got {TRUSTED_PROXY_COUNT}")
# How long a web process remembers an API key it found (a revoked key stops at once in the process
# that revoked it, within this many seconds everywhere else); 0 looks every key up every time.
API_KEY_CACHE_SECONDS = env_int("API_KEY_CACHE_SECONDS", 5)

# Alert webhooks may target loopback, link-local (cloud metadata), private and multicast
# addresses only when this is on: on by default on one machine (embedded mode, DEBUG), off in
# production, where a webhook URL typed in the console must not reach the internal network.
# Set it to true for an on-premise receiver on the private network.
ALERT_WEBHOOK_ALLOW_PRIVATE = env_bool("ALERT_WEBHOOK_ALLOW_PRIVATE", not PRODUCTION)
# A project's Slack incoming-webhook URL must be https:// (Slack's are) unless this is off; off by
# default on one machine, where a local Slack-compatible receiver may speak plain HTTP.
SLACK_WEBHOOK_HTTPS_ONLY = env_bool("SLACK_WEBHOOK_HTTPS_ONLY", PRODUCTION)

# Where people reach the console (scheme, host and any path prefix, no trailing slash): alert
# messages (Slack) link to its pages. Unset in production: the messages carry no link.
SITE_URL = env_str("SITE_URL", "" if PRODUCTION else "http://127.0.0.1:8000").rstrip("/")
if SITE_URL and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", SITE_URL):
    raise ImproperlyConfigured(f"SITE_URL must be an http(s) URL such as https://budgets.example.com, got {SITE_URL!r}")

# Production sits behind a TLS-terminating load balancer; embedded mode serves plain HTTP.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]

# Sent with every page (budgets/middleware.py). The console, Django admin and Swagger UI load
# only the service's own files and run no inline script. Styles may be inline: Plotly adds
# <style> elements and sets style attributes on its SVG (checked in Chromium), and a style
# cannot run code.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "frame-ancestors 'none'",
    # With single sign-on the middleware adds the issuer's origin here (budgets/middleware.py).
    "form-action 'self'",
])

# LOG_FORMAT=json: one JSON object per line, with the request id; secrets are masked either way.
LOG_FORMAT = env_str("LOG_FORMAT", "text")
if LOG_FORMAT not in ("text", "json"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be text or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "budgets.observability.RequestIdFilter"},
        "redact": {"()": "budgets.observability.RedactSecrets"},
    },
    "formatters": {
        "json": {"()": "budgets.observability.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT,
                             "filters": ["request_id", "redact"]}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}

# GET /metrics (Prometheus) answers only with `Authorization: Bearer <METRICS_TOKEN>`; unset = off.
METRICS_TOKEN = env_str("METRICS_TOKEN")
