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


# Reads current by construction: an entry point that reads budgets first brings them into their
# current period through one of these (each calls services.budget_current or ensure_current_period).
CURRENT = {"budget_current", "current_budget", "ensure_current_period", "current_project", "get_budget_for_project",
           "_current", "_budget"}
ENTRY_POINTS = ("api", "views", "manager.py")
BUDGET_MODELS = {"UserBudget", "ModelSpend"}
# Selectors that read budgets but no figure a period changes (spend, period dates), so need no reset.
NO_PERIOD_FIGURES = {
    "has_budget_or_costs": "whether a user has a budget or ledger rows",
    "user_ids": "the project's user ids",
    "project_contents": "how many budgets, keys and events a project deletion removes",
    "scrape_figures": "counts budgets whose reset is overdue: a lazy reset would hide what it measures",
    "budgets_by_user": "totals and durations a bulk import would change",
}


def _budget_selectors(root: Path) -> set[str]:
    """Selectors that read budgets from a project (those given a budget read one already current)."""
    names = set()
    for path in sorted((root / "selectors").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            first = node.args.args[0].annotation if node.args.args else None
            given_a_budget = isinstance(first, ast.Name) and first.id == "UserBudget"
            reads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & BUDGET_MODELS
            if reads and not given_a_budget and node.name not in NO_PERIOD_FIGURES:
                names.add(node.name)
    return names


def reads_skipping_the_period(root: Path = BUDGETS) -> list[str]:
    """Entry-point functions that read budgets without bringing them into their current period first."""
    readers = _budget_selectors(root)
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] not in ENTRY_POINTS:
            continue
        functions = [node for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name not in CURRENT]
        calls = {f.name: _calls(f) for f in functions}
        for function in functions:
            called = calls[function.name]
            queries = any(set(_chain(call.func)) & BUDGET_MODELS
                          for call in ast.walk(function) if isinstance(call, ast.Call))
            if not (called & readers or queries) or called & CURRENT:
                continue
            # A module's private helper is covered when every caller in the module brought the period up.
            callers = [name for name, names in calls.items() if function.name in names]
            if function.name.startswith("_") and callers and all(calls[name] & CURRENT for name in callers):
                continue
            found.append(f"{relative}:{function.lineno} {function.name}")
    return found


def _calls(function: ast.AST) -> set[str]:
    return {_chain(call.func)[0] for call in ast.walk(function) if isinstance(call, ast.Call) and _chain(call.func)}


def test_every_read_of_a_budget_brings_it_into_its_current_period_first():
    assert reads_skipping_the_period() == []


def test_the_period_scan_finds_a_read_that_skips_it(tmp_path):
    (tmp_path / "selectors").mkdir()
    (tmp_path / "selectors" / "budgets.py").write_text(
        "def budgets_page(project):\n    return UserBudget.objects.filter(project=project)\n"
        "def model_costs(budget: UserBudget):\n    return ModelSpend.objects.filter(budget=budget)\n"
    )
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "users.py").write_text(
        "def list_users(request, project):\n    return selectors.budgets_page(project)\n"
        "def list_current(request, project):\n"
        "    services.ensure_current_period(project, all_users=True)\n    return selectors.budgets_page(project)\n"
        "def get_user(request, user):\n    return UserBudget.objects.get(user_id=user)\n"
        "def spend(request, user):\n    return selectors.model_costs(current_budget(request, user).budget)\n"
        "def _page(project):\n    return selectors.budgets_page(project)\n"
        "def page(request, project):\n    return _page(current_project(request, project))\n"
        "def _skipped(project):\n    return selectors.budgets_page(project)\n"
        "def other_page(request, project):\n    return _skipped(project)\n"
    )
    assert reads_skipping_the_period(tmp_path) == [
        "api/users.py:1 list_users", "api/users.py:6 get_user", "api/users.py:14 _skipped",
    ]


def _private_uses(root: Path) -> list[str]:
    """Django's (and Python's) internals a module reaches into: an instance's `_state`, its `__dict__`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] == "migrations":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("_state", "__dict__"):
                found.append(f"{relative}:{node.lineno} .{node.attr}")
    return found


def test_no_module_reaches_into_an_instances_state_or_dict():
    assert _private_uses(BUDGETS) == []


def test_the_private_scan_finds_state_and_dict(tmp_path):
    (tmp_path / "selectors.py").write_text("def f(a, b):\n    b._state = a._state\n    return a.__dict__.get('x')\n")
    assert _private_uses(tmp_path) == ["selectors.py:2 ._state", "selectors.py:2 ._state", "selectors.py:3 .__dict__"]


def _callback_parameters(root: Path) -> list[str]:
    """Service functions that take a callable from their caller: a way for a service to call back up."""
    found = []
    for path in sorted((root / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            for arg in node.args.kwonlyargs:
                if arg.annotation is not None and "Callable" in ast.unparse(arg.annotation):
                    found.append(f"services/{path.relative_to(root / 'services')}:{node.lineno} {node.name}({arg.arg})")
    return found


def test_no_service_takes_a_callback_from_its_caller():
    """A service returns domain objects; the API builds its answer after the service returned."""
    assert _callback_parameters(BUDGETS) == []


def test_the_callback_scan_finds_one(tmp_path):
    (tmp_path / "services").mkdir()
    (tmp_path / "services" / "costs.py").write_text(
        "def cost_record(*, project, answer: Callable[[CostRecorded], str]):\n    pass\n"
        "def retry(func: Callable[..., T]):\n    pass\n"  # a decorator's positional function: not a callback
    )
    assert _callback_parameters(tmp_path) == ["services/costs.py:1 cost_record(answer)"]
