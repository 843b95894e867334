"""The console's views, one module per page (budgets/urls.py routes them).

Each name lives in the module of its concern; `views.<name>` finds it there (base.namespace).
"""

from __future__ import annotations

from ..base.namespace import Namespace

_names = Namespace(__name__, __path__)
__getattr__ = _names.get
__dir__ = _names.names
