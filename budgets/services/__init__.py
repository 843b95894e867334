"""Writes: every change to budgets, spend, keys, projects and alerts goes through these functions.

The console, the JSON API, the hosted protocol, the admin and the Celery tasks all call
them, so each rule (validation, audit, lazy reset) lives in one place. Spend is only
ever changed with F() expressions or conditional updates. Locks: project, then budgets.

Each name lives in the module of its concern; `services.<name>` finds it there (base.namespace).
"""

from __future__ import annotations

from ..base.namespace import Namespace

_names = Namespace(__name__, __path__)
__getattr__ = _names.get
__dir__ = _names.names
