"""The code's layers hold: only budgets/services/ writes to the database.

import-linter (`make lint`) checks who imports whom; this test checks the other half of
the rule, that no module outside services/ calls a model's or a queryset's write methods.
"""

from __future__ import annotations

import ast
from pathlib import Path

BUDGETS = Path(__file__).resolve().parent.parent / "budgets"
# Always writes, whatever they are called on.
WRITES = {"save", "bulk_create", "bulk_update", "get_or_create", "update_or_create", "create_user", "create_superuser"}
# Writes when called on a manager or a queryset (dict.update and friends are fine).
QUERYSET_WRITES = {"create", "update", "delete"}
QUERYSET_MARKS = {"objects", "_default_manager", "filter", "exclude", "all", "select_for_update", "db_manager"}


def _chain(node: ast.AST) -> list[str]:
    """The attribute and call names a call is made on: a.objects.filter(x).update → [update, filter, objects, a]."""
    names = []
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Name):
            names.append(node.id)
            return names
        else:
            return names


def writes_outside_services(root: Path = BUDGETS) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("services", "migrations"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            chain = _chain(node.func)
            method = chain[0]
            if method in WRITES or (method in QUERYSET_WRITES and QUERYSET_MARKS & set(chain[1:])):
                found.append(f"{relative}:{node.lineno} .{method}()")
    return found


def test_only_services_write_to_the_database():
    assert writes_outside_services() == []


def test_the_scan_finds_a_write_where_there_is_one(tmp_path):
    (tmp_path / "views.py").write_text(
        "def view(budget, changes):\n"
        "    UserBudget.objects.filter(pk=1).update(total_budget=0)\n"
        "    budget.save()\n"
        "    changes.update(a=1)\n"  # a dict: not a write
    )
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "budgets.py").write_text("def f(budget):\n    budget.save()\n")
    assert writes_outside_services(tmp_path) == ["views.py:2 .update()", "views.py:3 .save()"]
