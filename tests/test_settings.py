"""Settings from the environment: embedded defaults, production refusing a missing secret, check --deploy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here starts manage.py in a process of its own

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "ALLOWED_HOSTS")
             and not k.startswith(("SECURE_", "SESSION_COOKIE_", "CSRF_COOKIE_"))}
    clean.update({"DJANGO_SETTINGS_MODULE": "budgetsite.settings", "VAR_DIR": str(tmp_path / "var"), **env})
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=120)


def test_production_refuses_to_start_without_a_secret_key(tmp_path):
    result = manage("check", env={"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x"}, tmp_path=tmp_path)

    assert result.returncode != 0
    assert "SECRET_KEY is not set" in result.stderr


def test_production_refuses_a_weak_secret_key(tmp_path):
    result = manage("check", env={"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/x", "SECRET_KEY": "short"},
                    tmp_path=tmp_path)

    assert result.returncode != 0
    assert "too weak" in result.stderr


def test_a_bad_boolean_is_a_configuration_error(tmp_path):
    result = manage("check", env={"DEBUG": "maybe"}, tmp_path=tmp_path)

    assert result.returncode != 0
    assert "DEBUG must be a boolean" in result.stderr


def test_with_nothing_set_it_runs_embedded_on_sqlite_with_a_kept_secret(tmp_path):
    result = manage("shell", "-c", "from django.conf import settings as s; print(s.DATABASES['default']['ENGINE'],"
                    " s.CELERY_BROKER_URL, s.SECRET_KEY)", env={}, tmp_path=tmp_path)

    assert result.returncode == 0, result.stderr
    engine, broker, secret = result.stdout.strip().splitlines()[-1].split()
    assert engine == "django.db.backends.sqlite3"
    assert broker == f"sqla+sqlite:///{tmp_path / 'var' / 'broker.sqlite3'}"
    assert secret == (tmp_path / "var" / "secret_key").read_text().strip()
    assert len(secret) >= 50


def test_check_deploy_passes_with_production_settings(tmp_path):
    env = {
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "SECRET_KEY": "k3v9-Qz7!pLm2@Wx8#Rt5$Yb1%Nc4^Hd6&Jf0*Gs3(Ua7)Ei9_Ov",
        "ALLOWED_HOSTS": "budgets.example.com",
    }
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=env, tmp_path=tmp_path)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_kept_database_connections_are_health_checked_unless_turned_off(tmp_path):
    show = ("from django.conf import settings as s; d = s.DATABASES['default'];"
            " print(d['CONN_MAX_AGE'], d['CONN_HEALTH_CHECKS'])")
    production = {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
                  "SECRET_KEY": "k3v9-Qz7!pLm2@Wx8#Rt5$Yb1%Nc4^Hd6&Jf0*Gs3(Ua7)Ei9_Ov"}

    default = manage("shell", "-c", show, env=production, tmp_path=tmp_path)
    off = manage("shell", "-c", show, env={**production, "DB_CONN_HEALTH_CHECKS": "false"}, tmp_path=tmp_path)

    assert default.returncode == 0 and off.returncode == 0, default.stderr + off.stderr
    assert default.stdout.strip().splitlines()[-1] == "60 True"
    assert off.stdout.strip().splitlines()[-1] == "60 False"


def test_slack_alerts_link_to_site_url_and_take_only_https_in_production(tmp_path):
    show = "from django.conf import settings as s; print(repr(s.SITE_URL), s.SLACK_WEBHOOK_HTTPS_ONLY)"
    production = {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/postgres",
                  "SECRET_KEY": "k3v9-Qz7!pLm2@Wx8#Rt5$Yb1%Nc4^Hd6&Jf0*Gs3(Ua7)Ei9_Ov"}

    embedded = manage("shell", "-c", show, env={}, tmp_path=tmp_path)
    unset = manage("shell", "-c", show, env=production, tmp_path=tmp_path)
    given = manage("shell", "-c", show, env={**production, "SITE_URL": "https://budgets.example.com/"},
                   tmp_path=tmp_path)

    assert embedded.returncode == unset.returncode == given.returncode == 0, embedded.stderr + unset.stderr
    assert embedded.stdout.strip().splitlines()[-1] == "'http://127.0.0.1:8000' False"
    assert unset.stdout.strip().splitlines()[-1] == "'' True"
    assert given.stdout.strip().splitlines()[-1] == "'https://budgets.example.com' True"


def test_a_site_url_that_is_no_url_stops_the_start(tmp_path):
    result = manage("check", env={"SITE_URL": "budgets.example.com"}, tmp_path=tmp_path)

    assert result.returncode != 0
    assert "SITE_URL must be an http(s) URL" in result.stderr
