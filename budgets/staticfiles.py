"""Bootstrap and Plotly served from their PyPI packages, as if they were in static/vendor/.

The console's pages fetch nothing from the internet: Bootstrap's dist files come from the
`django-bootstrap-static` wheel (module `bootstrap`), plotly.min.js from the `plotly` package.
This finder exposes just those files (not the rest of the packages' data), for runserver,
the test live server, WhiteNoise with finders and `collectstatic` alike.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

# Static path (under STATIC_URL) → (package, directory inside the package, file names).
VENDOR_DIRS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vendor/bootstrap/css": (
        "bootstrap", "static/bootstrap/css", ("bootstrap.min.css", "bootstrap.min.css.map"),
    ),
    "vendor/bootstrap/js": (
        "bootstrap", "static/bootstrap/js", ("bootstrap.bundle.min.js", "bootstrap.bundle.min.js.map"),
    ),
    "vendor/plotly": ("plotly", "package_data", ("plotly.min.js",)),
}


def _package_dir(package: str) -> Path | None:
    # find_spec does not import the package: plotly's import is slow and not needed here.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class VendorFinder(BaseFinder):
    """Finds the vendored files listed in VENDOR_DIRS inside their installed packages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.storages: dict[str, FileSystemStorage] = {}
        self.files: dict[str, tuple[str, ...]] = {}
        for prefix, (package, subdir, names) in VENDOR_DIRS.items():
            root = _package_dir(package)
            if root is None:
                continue
            storage = FileSystemStorage(location=root / subdir)
            storage.prefix = prefix  # collectstatic and WhiteNoise put files under it
            self.storages[prefix] = storage
            self.files[prefix] = names

    def check(self, **kwargs: Any) -> list[Error]:
        errors = []
        for prefix, (package, subdir, names) in VENDOR_DIRS.items():
            storage = self.storages.get(prefix)
            missing = [name for name in names if storage is None or not storage.exists(name)]
            if missing:
                errors.append(Error(
                    f"static files {', '.join(missing)} not found in the {package!r} package ({subdir})",
                    hint="pip install -r requirements.txt (django-bootstrap-static, plotly)",
                    id="budgets.E001",
                ))
        return errors

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        find_all = kwargs.pop("all", find_all)  # Django 5.2 still passes the old name
        matches = []
        prefix, _, name = path.rpartition("/")
        storage = self.storages.get(prefix)
        if storage is not None and name in self.files[prefix] and storage.exists(name):
            matches.append(storage.path(name))
        if find_all:
            return matches
        return matches[0] if matches else []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        for prefix, storage in self.storages.items():
            for name in self.files[prefix]:
                if storage.exists(name):
                    yield name, storage
