"""plotly.min.js served from the `plotly` package at static/vendor/plotly/plotly.min.js.

The console fetches nothing from the internet.  Bootstrap comes from the
`django-bootstrap-static` wheel, a Django app (`bootstrap` in INSTALLED_APPS), so
AppDirectoriesFinder serves it.  plotly is not a Django app and its package_data
folder also holds datasets and templates, so this finder exposes its one file, for
runserver, the test live server, WhiteNoise with finders and `collectstatic` alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles import finders
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import CheckMessage, Error
from django.core.files.storage import FileSystemStorage

PLOTLY_PREFIX = "vendor/plotly"
PLOTLY_FILE = "plotly.min.js"
# What base.html and the chart pages load; the check below fails if any is not found.
REQUIRED_ASSETS = (
    "bootstrap/css/bootstrap.min.css",
    "bootstrap/js/bootstrap.bundle.min.js",
    f"{PLOTLY_PREFIX}/{PLOTLY_FILE}",
)


def _plotly_package_data() -> Path | None:
    # find_spec does not import the package: plotly's import is slow and not needed here.
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "package_data"


class PlotlyFinder(BaseFinder):
    """Finds vendor/plotly/plotly.min.js in the installed plotly package, and nothing else."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        root = _plotly_package_data()
        self.storage = FileSystemStorage(location=root) if root is not None else None
        if self.storage is not None:
            # collectstatic and WhiteNoise put the file under it; `prefix` is not in the stub.
            self.storage.prefix = PLOTLY_PREFIX  # type: ignore[attr-defined]

    def _available(self) -> bool:
        return self.storage is not None and self.storage.exists(PLOTLY_FILE)

    def check(self, **kwargs: Any) -> list[CheckMessage]:
        missing = [path for path in REQUIRED_ASSETS if not finders.find(path)]
        if not missing:
            return []
        return [Error(
            f"static files {', '.join(missing)} not found",
            hint="pip install -r requirements.txt (django-bootstrap-static, plotly) and keep "
                 "'bootstrap' in INSTALLED_APPS",
            id="budgets.E001",
        )]

    # The stub's overloads cannot express the `all=` keyword Django 5.2 still passes.
    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:  # type: ignore[override]
        find_all = kwargs.pop("all", find_all)  # Django 5.2 still passes the old name
        matches = []
        if path == f"{PLOTLY_PREFIX}/{PLOTLY_FILE}" and self._available():
            assert self.storage is not None
            matches.append(self.storage.path(PLOTLY_FILE))
        if find_all:
            return matches
        return matches[0] if matches else []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        if self._available():
            assert self.storage is not None
            yield PLOTLY_FILE, self.storage
