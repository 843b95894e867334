"""A package's public names, found in its modules on first use: no re-export list to keep up.

`services`, `selectors` and `views` are one module per concern; code inside `budgets` imports
a name from the module that defines it (so mypy sees its type), while tests, the shell and
scripts may still write `services.budget_set`. A new service is one new file. A module's name wins
over a function of the same name (`views.project_settings` is the module).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType
from typing import Any


class Namespace:
    """Looks a public name up in the modules of one package, and remembers where it was."""

    def __init__(self, package: str, path: Iterable[str]) -> None:
        self.package = package
        self.path = list(path)
        self.found: dict[str, Any] = {}

    def submodules(self) -> list[str]:
        return [info.name for info in pkgutil.iter_modules(self.path) if not info.name.startswith("_")]

    def modules(self) -> list[ModuleType]:
        return [importlib.import_module(f"{self.package}.{name}") for name in self.submodules()]

    def get(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(f"module {self.package!r} has no attribute {name!r}")
        if name in self.submodules():
            # `from . import ledger` asks the package first: import the module itself, nothing else.
            return importlib.import_module(f"{self.package}.{name}")
        if name not in self.found:
            self.found[name] = self._lookup(name)
        return self.found[name]

    def _lookup(self, name: str) -> Any:
        # The module that defines the name wins over one that imports it from a sibling.
        holders = [module for module in self.modules() if name in vars(module)]
        for module in holders:
            if getattr(vars(module)[name], "__module__", None) == module.__name__:
                return vars(module)[name]
        if holders:
            return vars(holders[0])[name]
        raise AttributeError(f"module {self.package!r} has no attribute {name!r}")

    def names(self) -> list[str]:
        return sorted({name for module in self.modules() for name in vars(module) if not name.startswith("_")})
