"""The console's views, one module per page (budgets/urls.py routes them).

Each name lives in the module of its concern; `views.<name>` finds it there (base.namespace).
"""

from __future__ import annotations

from typing import Any

from ..base.namespace import Namespace

_names = Namespace(__name__, __path__)


def __getattr__(name: str) -> Any:
    return _names.get(name)


def __dir__() -> list[str]:
    return _names.names()
