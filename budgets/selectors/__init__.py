"""Every read: budgets, spend, the ledger and keys (`budgets`), the console's aggregates (`console`).

Nothing here writes. A read that must see the current period calls
`services.ensure_current_period` first; selectors never reset anything themselves.

Each name lives in the module of its concern; `selectors.<name>` finds it there (base.namespace).
"""

from __future__ import annotations

from ..base.namespace import Namespace

_names = Namespace(__name__, __path__)
__getattr__ = _names.get
__dir__ = _names.names
