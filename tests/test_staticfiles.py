"""The console's vendor assets: Bootstrap from its Django app, plotly.min.js alone from plotly."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from budgets import staticfiles

PLOTLY_FINDER = "budgets.staticfiles.PlotlyFinder"


@pytest.mark.parametrize(
    "path, package",
    [
        ("bootstrap/css/bootstrap.min.css", "bootstrap"),
        ("bootstrap/js/bootstrap.bundle.min.js", "bootstrap"),
        ("vendor/plotly/plotly.min.js", "plotly"),
    ],
)
def test_each_asset_the_pages_load_is_found_in_its_package(path, package):
    found = finders.find(path)

    assert found, path
    assert f"/site-packages/{package}/" in Path(found).as_posix()
    assert Path(found).stat().st_size > 10_000


def test_the_plotly_finder_exposes_plotly_min_js_and_nothing_else_of_the_package():
    finder = finders.get_finder(PLOTLY_FINDER)

    assert [name for name, _storage in finder.list([])] == ["plotly.min.js"]
    assert finder.find("vendor/plotly/widgetbundle.js") == []
    assert finder.find("vendor/plotly/../package_data/plotly.min.js") == []
    assert finder.find("plotly.min.js") == []
    assert len(finder.find("vendor/plotly/plotly.min.js", find_all=True)) == 1


def test_the_check_passes_when_every_asset_is_installed():
    assert finders.get_finder(PLOTLY_FINDER).check() == []


def test_the_check_fails_loudly_when_plotly_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(staticfiles, "_plotly_package_data", lambda: tmp_path)
    finders.get_finder.cache_clear()
    try:
        errors = finders.get_finder(PLOTLY_FINDER).check()
        assert [error.id for error in errors] == ["budgets.E001"]
        assert "vendor/plotly/plotly.min.js" in errors[0].msg
        with pytest.raises(SystemCheckError, match=r"budgets\.E001"):
            call_command("check")
    finally:
        finders.get_finder.cache_clear()


def test_the_check_fails_loudly_without_the_bootstrap_app():
    apps = [app for app in settings.INSTALLED_APPS if app != "bootstrap"]
    with override_settings(INSTALLED_APPS=apps):
        errors = finders.get_finder(PLOTLY_FINDER).check()
    assert [error.id for error in errors] == ["budgets.E001"]
    assert "bootstrap/css/bootstrap.min.css, bootstrap/js/bootstrap.bundle.min.js not found" in errors[0].msg


@pytest.mark.django_db
def test_the_favicon_is_served_at_the_root_and_linked_from_every_page(client):
    response = client.get("/favicon.ico")
    login = client.get("/login/").content.decode()

    assert response.status_code == 200
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert response["Content-Type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert '<link rel="icon" href="/static/console/favicon.svg" type="image/svg+xml">' in login
    assert finders.find("console/favicon.svg")
