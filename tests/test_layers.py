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


# The ledger's one writer (services/ledger.py): ledger rows and what derives from them.
LEDGER_INSERTS = {"create", "bulk_create", "get_or_create", "update_or_create"}
LEDGER_HELPERS = {"bulk_insert", "insert_rows", "rollups_add_events"}  # write CostEvent rows or their rollups
LEDGER_SQL = ("insert into budgets_costevent", "copy budgets_costevent")


def ledger_writers(root: Path = BUDGETS) -> list[str]:
    """Modules that insert ledger rows (ORM, bulk helpers, SQL) or add to the rollups: one is expected."""
    found = set()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "migrations":
            continue
        text = path.read_text()
        if any(sql in " ".join(text.lower().split()) for sql in LEDGER_SQL):
            found.add(str(relative))
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            chain = _chain(node.func)
            if not chain:
                continue
            on_ledger = chain[0] in LEDGER_INSERTS and "CostEvent" in chain[1:]
            first = node.args[0] if node.args else None
            helper = chain[0] in LEDGER_HELPERS and (
                chain[0] == "rollups_add_events" or (isinstance(first, ast.Name) and first.id == "CostEvent"))
            if on_ledger or helper:
                found.add(str(relative))
    return sorted(found)


def test_only_the_ledger_module_writes_ledger_rows():
    assert ledger_writers() == ["services/ledger.py"]


def test_the_ledger_scan_finds_every_kind_of_ledger_insert(tmp_path):
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "ledger.py").write_text("def f():\n    CostEvent.objects.create(cost=1)\n")
    (tmp_path / "services" / "costs.py").write_text("def f(rows):\n    CostEvent.objects.bulk_create(rows)\n")
    (tmp_path / "services" / "hosted.py").write_text("def f(p, events):\n    rollups_add_events(p, events)\n")
    (tmp_path / "services" / "demo.py").write_text("def f(rows):\n    bulk_insert(CostEvent, COLUMNS, rows)\n")
    (tmp_path / "services" / "raw.py").write_text('SQL = """\nINSERT INTO\n  budgets_costevent (cost) VALUES (1)"""\n')
    (tmp_path / "services" / "reads.py").write_text("def f():\n    return CostEvent.objects.filter(cost=1)\n")
    assert ledger_writers(tmp_path) == [
        "services/costs.py", "services/demo.py", "services/hosted.py", "services/ledger.py", "services/raw.py",
    ]

