"""Writes: every change to budgets, spend, keys, projects and alerts goes through these functions.

The console, the JSON API, the hosted protocol, the admin and the Celery tasks all call
them, so each rule (validation, audit, lazy reset) lives in one place. Spend is only
ever changed with F() expressions or conditional updates. Locks: project, then budgets.

Each name lives in the module of its concern; `services.<name>` finds it there (base.namespace).
"""

from __future__ import annotations

from typing import Any

from ..base.namespace import Namespace

_names = Namespace(__name__, __path__)


def __getattr__(name: str) -> Any:
    return _names.get(name)


def __dir__() -> list[str]:
    return _names.names()
